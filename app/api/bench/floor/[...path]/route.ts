/**
 * Benchmark baseline only (`npm run bench`): the `floor`, an empty Next route handler that answers from memory
 * with no upstream call, so the bench can show Next's own per-request ceiling next to the proxies. It is NOT part
 * of Keyward and proxies nothing.
 *
 * Served under the same opt-in as the naive route: only with KEYWARD_DEMO=true (or 1) AND
 * KEYWARD_BENCH_NAIVE_BASE set to a plain-http loopback URL (which only `npm run bench` sets); otherwise 404.
 * It answers `small` (the bench upstream's ~200 B JSON) and `mib` (1 MiB, allocated once on first use); any
 * other path is 404.
 */
export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

let enabled: boolean | undefined;
let mib: Uint8Array<ArrayBuffer> | undefined;

const small = JSON.stringify({
  id: 'item_0001',
  name: 'Widget',
  price: { amount: 1999, currency: 'EUR' },
  tags: ['bench', 'small', 'json'],
  stock: 42,
  updatedAt: '2026-01-01T00:00:00.000Z',
  description: 'A small JSON document for the benchmark.',
});

/** The bench's opt-in, as for the naive route: the demo flag and a loopback naive base. */
function floorEnabled(): boolean {
  if (enabled !== undefined) return enabled;
  enabled = false;
  if (process.env.KEYWARD_DEMO !== 'true' && process.env.KEYWARD_DEMO !== '1') return enabled;
  try {
    const url = new URL(process.env.KEYWARD_BENCH_NAIVE_BASE ?? '');
    enabled = url.protocol === 'http:' && LOOPBACK.has(url.hostname) && !url.username && !url.password && !url.search;
  } catch {
    // unset or not a URL: stay disabled
  }
  return enabled;
}

export async function GET(_request: Request, { params }: { params: Promise<{ path: string[] }> }) {
  if (!floorEnabled()) return new Response(null, { status: 404 });
  const { path } = await params;
  const name = path.join('/');
  if (name === 'small') return new Response(small, { headers: { 'content-type': 'application/json' } });
  if (name === 'mib') {
    mib ??= new Uint8Array(new ArrayBuffer(1024 * 1024)).fill(0x61);
    return new Response(mib, { headers: { 'content-type': 'application/octet-stream' } });
  }
  return new Response(null, { status: 404 });
}
