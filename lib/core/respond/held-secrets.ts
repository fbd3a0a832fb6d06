import 'server-only';

/**
 * Every secret this process holds that every answer is scrubbed of (ProxyDeps.heldSecrets): those each runtime
 * read at start-up, and each managed key version (lib/core/keys/rings.ts) from the moment this process adds or
 * opens it. Only grows: a secret once held stays a secret (a revoked key is no less one).
 */
export class HeldSecrets {
  private list: readonly string[];
  private readonly known: Set<string>;

  constructor(initial: Iterable<string> = []) {
    this.known = new Set(initial);
    this.list = Object.freeze([...this.known]);
  }

  /**
   * The secrets held now: the same frozen array until one is added, then a new one, so what is cached by the
   * list object (the credential joined to it, the scrubber's forms) is computed again once, and dropped with the
   * old list.
   */
  current(): readonly string[] {
    return this.list;
  }

  add(secrets: Iterable<string>): void {
    const fresh = [...secrets].filter((secret) => !this.known.has(secret));
    if (fresh.length === 0) return;
    for (const secret of fresh) this.known.add(secret);
    this.list = Object.freeze([...this.known]);
  }
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
