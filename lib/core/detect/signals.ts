/**
 * Security signals the request paths raise for the anomaly detector (lib/core/detect/detector.ts). Raising one
 * never blocks or slows the call that raised it: the detector queues it and acts off the request's path.
 */
export interface SecuritySignals {
  /** A request presented a decoy credential (honeytoken) or called a decoy route. */
  decoyHit(hit: DecoyHit): void;
}

export interface DecoyHit {
  /** `credential`: a decoy value was found in the request; `route`: a route declared `decoy: true` was called. */
  readonly kind: 'credential' | 'route';
  /** The decoy's id (from the decoys file) for `credential`; null for `route`. Never the decoy's value. */
  readonly decoyId: string | null;
  /** Where it was found, by name only: `header:authorization`, `query:key`, `path`, `body`, `route`, `own-key`. */
  readonly where: string;
  /** The session the request carried (cookie or bearer), if one could be verified; else null. */
  readonly userId: string | null;
  readonly sessionId: string | null;
  readonly ip: string | null;
  readonly upstream: string;
  readonly route: string | null;
  readonly requestId: string;
}
