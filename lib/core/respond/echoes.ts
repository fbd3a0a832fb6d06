import { secretOfForm } from '../log/scrub';
import type { HeldSecrets, HeldSecretSource } from './held-secrets';

/**
 * A secret the leak scrubber took out of a call's answer, as the call's record names it (never its value), with how
 * many times: `credential`, the key the call was made with (or its user's own key or token, or an account name sent
 * with it); else what the held secret is (HeldSecretSource): another key (another upstream's, or another version of
 * this upstream's ring), or one of Keyward's settings.
 */
export type EchoedSecret = ({ readonly kind: 'credential' } | HeldSecretSource) & { readonly hits: number };

/**
 * Which secrets of a call's scrub list (its credential's, then every held one: ProxyDeps.heldSecrets) the leak
 * scrubber replaced, counted as it replaces them (`form`, the scrubber's onMatch) and named when the call is
 * recorded. Server-side only: what the client gets never depends on it.
 */
export class EchoTally {
  private counts: Map<number, number> | null = null;

  constructor(private readonly secrets: readonly string[]) {}

  /** The bytes of a form the scrubber replaced. */
  readonly form = (bytes: Uint8Array): void => this.secret(secretOfForm(this.secrets, bytes));

  /** One hit on the list's secret at `index` (-1: not known which, counted as the call's own credential). */
  secret(index: number): void {
    const counts = (this.counts ??= new Map());
    counts.set(index, (counts.get(index) ?? 0) + 1);
  }

  /**
   * What was echoed, by what it is: a secret held as the call's own key (same upstream and fingerprint), or not held
   * at all (a user's own key or token, a `basic` account name), is the call's `credential`; any other held secret is
   * named by its source (one value held as several, the first). Empty when nothing was replaced.
   */
  echoed(held: HeldSecrets | undefined, call: { readonly upstream: string; readonly fingerprint: string | null }): EchoedSecret[] {
    const merged = new Map<string, { source: { readonly kind: 'credential' } | HeldSecretSource; hits: number }>();
    for (const [index, hits] of this.counts ?? []) {
      const secret = this.secrets[index];
      const sources = secret === undefined || !held ? [] : held.sourcesOf(secret);
      const own = sources.length === 0 || sources.some((source) => source.kind === 'key' && source.upstream === call.upstream && source.fingerprint === call.fingerprint);
      const source = own ? CREDENTIAL : sources[0]!;
      const id = JSON.stringify(source);
      const entry = merged.get(id);
      if (entry) entry.hits += hits;
      else merged.set(id, { source, hits });
    }
    return [...merged.values()].map(({ source, hits }) => ({ ...source, hits }));
  }
}

const CREDENTIAL = { kind: 'credential' } as const;
