/**
 * Benchmark baseline only (`npm run bench`): the naive fetch passthrough that tutorials show, served by the
 * same Next server as Keyward's proxy so the two are compared fairly. It is NOT part of Keyward.
 *
 * Served only with the demo's explicit opt-in (KEYWARD_DEMO=true, which `npm run dev` and `npm run bench` set)
 * AND KEYWARD_BENCH_NAIVE_BASE set to a plain-http loopback URL; otherwise 404. Never an open proxy: the base is
 * fixed from env, `.`/`..` segments are refused, and the path is only appended.
 */
export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

let base: string | null | undefined;
let key: string | undefined;

/** The configured base (ending in "/"), or null when unset or not a plain loopback http URL. */
function naiveBase(): string | null {
  if (base !== undefined) return base;
  base = null;
  if (process.env.KEYWARD_DEMO !== 'true' && process.env.KEYWARD_DEMO !== '1') return base;
  try {
    const url = new URL(process.env.KEYWARD_BENCH_NAIVE_BASE ?? '');
    if (url.protocol === 'http:' && LOOPBACK.has(url.hostname) && !url.username && !url.password && !url.search) {
      base = url.origin + url.pathname.replace(/\/?$/, '/');
    }
  } catch {
    // unset or not a URL: stay disabled
  }
  return base;
}

export async function GET(_request: Request, { params }: { params: Promise<{ path: string[] }> }) {
  const root = naiveBase();
  if (root === null) return new Response(null, { status: 404 });
  key ??= process.env.KEYWARD_BENCH_NAIVE_KEY ?? '';
  const { path } = await params;
  // Decoded `%2e%2e` arrives as `..`, and URL resolution would climb out of the base with it.
  if (path.some((segment) => segment === '.' || segment === '..')) return new Response(null, { status: 400 });
  // The tutorial line, except that decoded segments are re-encoded so the path stays under the base.
  const r = await fetch(root + path.map(encodeURIComponent).join('/'), {
    headers: { 'x-api-key': key },
    cache: 'no-store', // never cache a response fetched with a key
  });
  return new Response(r.body, { status: r.status, headers: r.headers });
}
