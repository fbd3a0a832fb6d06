import 'server-only';

/**
 * What a held secret is, to name it when an answer echoes it (never its value): a service key of an upstream (a
 * version of its key ring, or a key a session claim chooses) by upstream and fingerprint, or one of Keyward's own
 * settings (or a secret it shares: a connection's client secret, the webhook's) by the name an admin changes it
 * under.
 */
export type HeldSecretSource =
  | { readonly kind: 'key'; readonly upstream: string; readonly fingerprint: string; readonly claim?: true }
  | { readonly kind: 'setting'; readonly setting: string };

/**
 * Every secret this process holds that every answer is scrubbed of (ProxyDeps.heldSecrets): those each runtime
 * read at start-up, and each managed key version (lib/core/keys/rings.ts) from the moment this process adds or
 * opens it. Only grows: a secret once held stays a secret (a revoked key is no less one). Each is held with what
 * it is (`sourcesOf`), for the scrubber-hit record that names what an upstream echoed.
 */
export class HeldSecrets {
  private list: readonly string[] = Object.freeze([]);
  private readonly known = new Map<string, HeldSecretSource[]>();

  constructor(initial: Iterable<string> = [], source?: HeldSecretSource) {
    this.add(initial, source);
  }

  /**
   * The secrets held now: the same frozen array until one is added, then a new one, so what is cached by the
   * list object (the credential joined to it, the scrubber's forms) is computed again once, and dropped with the
   * old list.
   */
  current(): readonly string[] {
    return this.list;
  }

  /** Holds `secrets`, as `source` when given (a secret held already is also that, from now on: it keeps the list). */
  add(secrets: Iterable<string>, source?: HeldSecretSource): void {
    let added = false;
    for (const secret of secrets) {
      let sources = this.known.get(secret);
      if (!sources) {
        this.known.set(secret, (sources = []));
        added = true;
      }
      if (source && !sources.some((known) => sameSource(known, source))) sources.push(source);
    }
    if (added) this.list = Object.freeze([...this.known.keys()]);
  }

  /** What a held secret is (several things when one value serves as several: two upstreams' key); none if not held. */
  sourcesOf(secret: string): readonly HeldSecretSource[] {
    return this.known.get(secret) ?? [];
  }
}

function sameSource(a: HeldSecretSource, b: HeldSecretSource): boolean {
  return a.kind === 'key' ? b.kind === 'key' && a.upstream === b.upstream && a.fingerprint === b.fingerprint : b.kind === 'setting' && a.setting === b.setting;
}

const PROCESS_HELD = Symbol.for('keyward.heldSecrets');

/**
 * The process's held secrets, shared through globalThis as its metrics are (lib/core/observe/metrics.ts): each
 * Next bundle builds its own runtime (lib/next/runtime.ts), and a key the admin API's handler adds in one must be
 * scrubbed from the answers another one's handlers pass on. Only plain method calls cross bundles here (no
 * `instanceof`).
 */
export function processHeldSecrets(): HeldSecrets {
  const holder = globalThis as { [PROCESS_HELD]?: HeldSecrets };
  return (holder[PROCESS_HELD] ??= new HeldSecrets());
}
