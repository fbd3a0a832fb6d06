/**
 * The benchmark only ever loads loopback: every URL it is about to hit goes through `assertLoopback`.
 * (Load-testing someone else's host by mistake, e.g. through a mistyped base URL, must be impossible.)
 */
export function isLoopbackHostname(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(hostname);
}

export function assertLoopback(target: string): URL {
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    throw new Error('bench: refusing a target that is not an absolute URL');
  }
  if (url.protocol !== 'http:' || !isLoopbackHostname(url.hostname) || url.username || url.password) {
    throw new Error(`bench: refusing non-loopback target ${url.protocol}//${url.host} (only http://127.x, localhost, [::1])`);
  }
  return url;
}

/** Upper bound on anything the bench collects per cell (latency samples), so memory stays bounded. */
export const MAX_SAMPLES = 2_000_000;
