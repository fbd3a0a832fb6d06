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
  /**
   * The session the request carried (cookie or bearer), if one could be verified (a cookie session only with the
   * CSRF check passed: README "Decoy keys"); else null.
   */
  readonly userId: string | null;
  readonly sessionId: string | null;
  /**
   * The user of a valid session cookie the request carried that failed the CSRF check (for a WebSocket, the
   * upgrade's Origin check): another site may have made that user's browser send it, so it is evidence only,
   * never acted on (`userId` is then null). Absent otherwise.
   */
  readonly unverifiedUserId?: string;
  readonly ip: string | null;
  readonly upstream: string;
  readonly route: string | null;
  readonly requestId: string;
}
