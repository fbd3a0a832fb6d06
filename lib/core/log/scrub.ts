/**
 * Replaces known secret values in text: the raw value and the forms it takes when it travels
 * (URL-encoded, base64, base64url, JSON-escaped). Used on every log line and error message.
 */
export const REDACTED = '[REDACTED]';

export function secretForms(secret: string): string[] {
  const forms = new Set<string>([secret]);
  forms.add(encodeURIComponent(secret));
  // application/x-www-form-urlencoded, as URLSearchParams writes query credentials (differs for ( ) ! ' ~ and space).
  forms.add(new URLSearchParams({ k: secret }).toString().slice(2));
  forms.add(JSON.stringify(secret).slice(1, -1));
  const base64 = Buffer.from(secret, 'utf8').toString('base64');
  forms.add(base64);
  forms.add(base64.replace(/=+$/, ''));
  forms.add(Buffer.from(secret, 'utf8').toString('base64url'));
  return [...forms].filter((form) => form.length >= 4);
}

const formsCache = new WeakMap<readonly string[], readonly string[]>();

/**
 * Every distinct form of every secret in the list, computed once per list: service credentials keep the same
 * list for the life of the process, so the header filter and the stream scrubber share one computation.
 */
export function formsOfSecrets(secrets: readonly string[]): readonly string[] {
  let forms = formsCache.get(secrets);
  if (!forms) {
    forms = [...new Set(secrets.flatMap((secret) => secretForms(secret)))];
    formsCache.set(secrets, forms);
  }
  return forms;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export class SecretScrubber {
  private readonly secrets = new Set<string>();
  private pattern: RegExp | null = null;

  add(secrets: Iterable<string>): void {
    for (const secret of secrets) for (const form of secretForms(secret)) this.secrets.add(form);
    // Longest first, so a form that contains another is replaced whole.
    const sorted = [...this.secrets].sort((a, b) => b.length - a.length);
    this.pattern = sorted.length ? new RegExp(sorted.map(escapeRegExp).join('|'), 'g') : null;
  }

  scrub(text: string): string {
    return this.pattern ? text.replace(this.pattern, REDACTED) : text;
  }
}

/**
 * A loggable copy of an error with the given secrets replaced in its message, stack and cause chain. Used
 * for per-user secrets (a user's own key, an OAuth token), which the process-wide log scrubber does not know.
 */
export function scrubError(error: unknown, secrets: readonly string[], depth = 0): unknown {
  if (!(error instanceof Error) || secrets.length === 0) return error;
  const scrubber = new SecretScrubber();
  scrubber.add(secrets);
  return {
    type: error.name,
    message: scrubber.scrub(error.message),
    stack: error.stack === undefined ? undefined : scrubber.scrub(error.stack),
    code: (error as { code?: unknown }).code,
    cause: depth < 3 ? scrubError(error.cause, secrets, depth + 1) : undefined,
  };
}
