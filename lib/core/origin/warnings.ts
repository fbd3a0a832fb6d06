import type { Logger } from 'pino';
import { isLoopbackHost } from '../config/schema';

/** Each distinct warning at most once in this window. */
const WINDOW_MS = 10 * 60_000;
/** At most this many origin warnings in a window, whatever their text: Host and Origin are the client's to choose. */
const MAX_PER_WINDOW = 20;
/** Distinct warnings remembered; past this many the memory starts over (bounded, like users/owner.ts). */
const MAX_REMEMBERED = 1_000;
/** Longest origin written to the log (a Host header may be kilobytes long). */
const MAX_LOGGED = 255;

/**
 * Warnings about a public origin that a reverse proxy in front of Keyward got wrong: the one mistake that makes
 * every state-changing call fail with only a 403 `csrf_failed` to show for it (a proxy that does not send
 * `X-Forwarded-Proto`, or drops the port or the Host). Each names what it saw and the likely fix, at most once per
 * distinct text every 10 minutes and 20 in all in that time: the headers are the client's, and a client must not
 * be able to fill the log.
 */
export class OriginWarnings {
  private readonly warnedAt = new Map<string, number>();
  private windowStart = Number.NEGATIVE_INFINITY;
  private inWindow = 0;

  constructor(
    private readonly logger: Pick<Logger, 'warn'>,
    private readonly fixedOrigin: boolean,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * A state-changing call (or WebSocket) refused because its Origin is not the public origin. Only the refusals a
   * deployment's proxy explains are logged: the same host name on another scheme or port, or a public origin on a
   * loopback name (the proxy passed its own `Host: 127.0.0.1:3000`) while the browser's is not. Another site's
   * Origin is what the check is for, and says nothing about the deployment.
   */
  refusedOrigin(origin: string, publicOrigin: string | null): void {
    if (publicOrigin === null) return;
    const seen = parseOrigin(origin);
    const expected = parseOrigin(publicOrigin);
    if (!seen || !expected) return;
    let hint: string;
    if (seen.hostname === expected.hostname) {
      hint = this.fixedOrigin
        ? 'AUTH_URL names another scheme or port than the browser uses: set AUTH_URL to the origin in the browser, or list that origin in KEYWARD_ALLOWED_ORIGINS'
        : 'does your reverse proxy set X-Forwarded-Proto (nginx: proxy_set_header X-Forwarded-Proto $scheme) and keep the port in Host / X-Forwarded-Host ($http_host)? Or set AUTH_URL to the public URL';
    } else if (isLoopbackHost(expected.hostname) && !isLoopbackHost(seen.hostname) && !this.fixedOrigin) {
      hint =
        'the public origin came out on a loopback name: does your reverse proxy pass the Host header (nginx: proxy_set_header Host $host, and X-Forwarded-Proto $scheme)? Or set AUTH_URL to the public URL';
    } else {
      return;
    }
    const logged = { origin: clip(seen.origin), publicOrigin: clip(expected.origin) };
    if (!this.allow(`refused\n${logged.origin}\n${logged.publicOrigin}`)) return;
    this.logger.warn(
      { ...logged, hint },
      `CSRF check refused Origin ${logged.origin}: the public origin computed for this request is ${logged.publicOrigin}; ${hint}`,
    );
  }

  /**
   * Production, trusting the host: the public origin computed for a request is plain `http://` on a name that is
   * not loopback. Browsers do not keep Keyward's Secure cookies there, and the browser's own `https://` Origin will
   * be refused: the proxy in front most likely does not send `X-Forwarded-Proto`.
   */
  plainHttpOrigin(publicOrigin: string): void {
    const url = parseOrigin(publicOrigin);
    if (!url || url.protocol !== 'http:' || isLoopbackHost(url.hostname)) return;
    const logged = clip(publicOrigin);
    if (!this.allow(`http\n${logged}`)) return;
    this.logger.warn(
      { publicOrigin: logged },
      `the public origin computed for a request is ${logged} (plain HTTP) under AUTH_TRUST_HOST: if the site is served over HTTPS, the reverse proxy in front must set X-Forwarded-Proto (nginx: proxy_set_header X-Forwarded-Proto $scheme), or set AUTH_URL`,
    );
  }

  private allow(key: string): boolean {
    const now = this.now();
    if (now - this.windowStart >= WINDOW_MS) {
      this.windowStart = now;
      this.inWindow = 0;
    }
    const last = this.warnedAt.get(key);
    if (last !== undefined && now - last < WINDOW_MS) return false;
    if (this.inWindow >= MAX_PER_WINDOW) return false;
    if (this.warnedAt.size >= MAX_REMEMBERED) this.warnedAt.clear();
    this.warnedAt.set(key, now);
    this.inWindow += 1;
    return true;
  }
}

function parseOrigin(value: string): URL | null {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url : null;
  } catch {
    return null;
  }
}

/** The client's text, cut to a length a log line can hold (JSON escapes the rest). */
function clip(value: string): string {
  return value.length > MAX_LOGGED ? `${value.slice(0, MAX_LOGGED)}…` : value;
}
