import { readFileSync } from 'node:fs';

/** A V8 .cpuprofile (as written by `node --cpu-prof`). */
interface CpuProfile {
  nodes: { id: number; callFrame: CallFrame; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
}
interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

export interface ProfileSummary {
  readonly name: string;
  readonly file: string;
  /** Requests served inside the analysed window (from the load generator), for µs-per-request figures. */
  readonly requests: number;
  /** CPU time the server used in the window (/proc), which shares are applied to for µs per request. */
  readonly cpuUsPerRequest: number;
  /** Sampled wall time (ms) inside the load window, and the part not idle. */
  readonly totalMs: number;
  readonly busyMs: number;
  /**
   * Exclusive buckets: each sample goes to the first known component found walking from the leaf up (a
   * library or Keyward frame is preferred over a Node internal one), so the shares add up to 100 %.
   */
  readonly buckets: { bucket: string; ms: number; pctOfBusy: number; usPerRequest: number }[];
  /** Functions with the most self time. */
  readonly topSelf: { frame: string; ms: number; pctOfBusy: number }[];
}

/** Components, most specific first. Frames of Next's bundled chunks are mapped to sources when possible. */
const BUCKETS: { bucket: string; test: (source: string, name: string) => boolean }[] = [
  { bucket: 'session: jose (JWE decrypt, WebCrypto)', test: (s) => s.includes('node_modules/jose/') },
  { bucket: 'session: @auth/core jwt (HKDF, thumbprint)', test: (s) => s.includes('@auth/core/') || s.includes('@panva/hkdf') },
  { bucket: 'session: lib/core/session (cookie, revocation)', test: (s) => s.includes('lib/core/session/') || s.includes('node_modules/cookie/') },
  { bucket: 'store (lib/store, ioredis, sqlite)', test: (s) => s.includes('lib/store/') || s.includes('ioredis') || s.includes('node:sqlite') },
  { bucket: 'log: pino + scrub', test: (s) => s.includes('pino') || s.includes('sonic-boom') || s.includes('lib/core/log/') },
  { bucket: 'respond: StreamScrubber', test: (s) => s.includes('lib/core/respond/scrub-stream') },
  { bucket: 'respond: ProxiedBody, framing', test: (s) => s.includes('lib/core/respond/') },
  { bucket: 'keyward: other lib/core + lib/next', test: (s) => s.includes('lib/core/') || s.includes('lib/next/') },
  { bucket: 'naive route handler', test: (s) => s.includes('app/api/bench/') },
  { bucket: 'undici package (Keyward dispatcher)', test: (s) => s.includes('node_modules/undici/') },
  { bucket: 'fetch (Node built-in undici)', test: (s) => s.includes('node:internal/deps/undici') },
  { bucket: 'zod', test: (s) => s.includes('node_modules/zod/') },
  { bucket: 'Next.js server', test: (s) => s.includes('node_modules/next/') || s.includes('.next/server/') || s.includes('next-server') },
  { bucket: 'React', test: (s) => s.includes('node_modules/react') },
  { bucket: 'node: web streams', test: (s) => s.includes('node:internal/webstreams') },
  { bucket: 'node: streams', test: (s) => s.includes('node:internal/streams') || s === 'node:stream' },
  { bucket: 'node: http/net', test: (s) => /^node:(?:_http|net|http|internal\/(?:http|net|stream_base))/.test(s) },
  { bucket: 'node: crypto', test: (s) => s.startsWith('node:internal/crypto') },
  { bucket: 'node: other', test: (s) => s.startsWith('node:') },
  { bucket: 'garbage collector', test: (_s, n) => n === '(garbage collector)' },
];
const OTHER = 'other (native, program, unattributed)';

interface ResolvedFrame {
  readonly name: string;
  /** Original source path (from the source map) or the script URL. */
  readonly source: string;
  readonly line: number;
}

type Mapper = (frame: CallFrame) => ResolvedFrame;

/** Maps bundled frames to their original sources with @jridgewell/trace-mapping when it is installed. */
async function createMapper(root: string): Promise<Mapper> {
  let tracer: typeof import('@jridgewell/trace-mapping') | null = null;
  try {
    tracer = await import('@jridgewell/trace-mapping');
  } catch {
    tracer = null;
  }
  const maps = new Map<string, InstanceType<typeof import('@jridgewell/trace-mapping').TraceMap> | null>();
  const plain = (frame: CallFrame): ResolvedFrame => ({
    name: frame.functionName || '(anonymous)',
    source: frame.url.replace(`file://${root}/`, ''),
    line: frame.lineNumber + 1,
  });
  return (frame) => {
    if (!tracer || !frame.url.startsWith('file://') || !frame.url.includes('/.next/')) return plain(frame);
    let map = maps.get(frame.url);
    if (map === undefined) {
      try {
        map = new tracer.TraceMap(readFileSync(`${new URL(frame.url).pathname}.map`, 'utf8'));
      } catch {
        map = null;
      }
      maps.set(frame.url, map);
    }
    if (!map) return plain(frame);
    const original = tracer.originalPositionFor(map, { line: frame.lineNumber + 1, column: frame.columnNumber });
    if (!original.source) return plain(frame);
    return {
      // A map's `name` is the identifier at that position, not always the enclosing function: keep a real
      // generated name, and mark names taken from the map with "~".
      name: frame.functionName.length > 2 ? frame.functionName : original.name ? `~${original.name}` : frame.functionName || '(anonymous)',
      source: safeDecode(original.source.replace(/^.*?\[project\]\//, '').replace(/^turbopack:\/\/\/?/, '')),
      line: original.line ?? 0,
    };
  };
}

/**
 * Summarises a .cpuprofile. `window` (µs on the monotonic clock, the clock V8 stamps samples with and
 * `process.hrtime` reads) limits the analysis to the load, leaving start-up and warm-up out.
 */
function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text); // maps spell `@auth/core` as `%40auth/core`
  } catch {
    return text;
  }
}

export async function analyzeProfile(
  file: string,
  name: string,
  root: string,
  window: { startUs: number; endUs: number; requests: number; cpuMs: number } | null,
): Promise<ProfileSummary> {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile & { startTime: number; endTime: number };
  const map = await createMapper(root);
  const parent = new Map<number, number>();
  const byId = new Map<number, CpuProfile['nodes'][number]>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const resolved = new Map<number, ResolvedFrame>();
  const frameOf = (id: number) => {
    let frame = resolved.get(id);
    if (!frame) {
      frame = map(byId.get(id)!.callFrame);
      resolved.set(id, frame);
    }
    return frame;
  };
  // The bucket of a sample's stack, computed once per node.
  const bucketCache = new Map<number, string>();
  const bucketOf = (leaf: number): string => {
    const cached = bucketCache.get(leaf);
    if (cached) return cached;
    let nodeInternal: string | null = null;
    let found: string | null = null;
    for (let id: number | undefined = leaf; id !== undefined && !found; id = parent.get(id)) {
      const frame = frameOf(id);
      const match = BUCKETS.find((b) => b.test(frame.source, frame.name));
      if (!match) continue;
      if (frame.source.startsWith('node:')) nodeInternal ??= match.bucket;
      else found = match.bucket;
    }
    const bucket = found ?? nodeInternal ?? OTHER;
    bucketCache.set(leaf, bucket);
    return bucket;
  };

  let inWindow = window !== null && window.startUs < profile.endTime && window.endUs > profile.startTime;
  if (window && !inWindow) console.warn(`profile ${name}: the load window is outside the profile; analysing all of it`);
  let time = profile.startTime;
  let totalUs = 0;
  let idleUs = 0;
  const self = new Map<string, number>();
  const bucketUs = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    time += profile.timeDeltas[i] ?? 0;
    if (inWindow && (time < window!.startUs || time > window!.endUs)) continue;
    const id = profile.samples[i]!;
    const delta = profile.timeDeltas[i + 1] ?? 0;
    totalUs += delta;
    const frame = frameOf(id);
    if (frame.name === '(idle)') {
      idleUs += delta;
      continue;
    }
    const key = `${frame.name} ${frame.source}${frame.line ? `:${frame.line}` : ''}`;
    self.set(key, (self.get(key) ?? 0) + delta);
    const bucket = bucketOf(id);
    bucketUs.set(bucket, (bucketUs.get(bucket) ?? 0) + delta);
  }
  inWindow &&= totalUs > 0;
  const busyUs = totalUs - idleUs;
  const requests = inWindow ? window!.requests : 0;
  const cpuUsPerRequest = requests ? (window!.cpuMs * 1000) / requests : 0;
  const pct = (us: number) => Math.round((us / busyUs) * 1000) / 10;
  // Samples are taken on wall time; on a busy machine a descheduled thread still collects them, so µs per
  // request come from the measured CPU time split by the sampled shares.
  const perRequest = (us: number) => Math.round((us / busyUs) * cpuUsPerRequest);
  return {
    name,
    file,
    requests,
    cpuUsPerRequest: Math.round(cpuUsPerRequest),
    totalMs: Math.round(totalUs / 1000),
    busyMs: Math.round(busyUs / 1000),
    buckets: [...bucketUs]
      .sort((a, b) => b[1] - a[1])
      .map(([bucket, us]) => ({ bucket, ms: Math.round(us / 1000), pctOfBusy: pct(us), usPerRequest: perRequest(us) })),
    topSelf: [...self]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 25)
      .map(([frame, us]) => ({ frame, ms: Math.round(us / 1000), pctOfBusy: pct(us) })),
  };
}

export function printProfile(summary: ProfileSummary) {
  const perRequest = summary.requests ? `, ${summary.requests} requests, ${summary.cpuUsPerRequest} µs CPU/request` : '';
  console.log(`\nprofile ${summary.name}: ${summary.busyMs} ms busy of ${summary.totalMs} ms under load${perRequest}`);
  console.log(`  (${summary.file})`);
  console.log('  where the time goes (exclusive, % of busy samples, µs of CPU per request):');
  for (const b of summary.buckets) {
    if (b.pctOfBusy < 0.3) continue;
    console.log(`    ${b.pctOfBusy.toFixed(1).padStart(5)} %  ${String(b.usPerRequest).padStart(5)} µs  ${b.bucket}`);
  }
  console.log('  top self time:');
  for (const f of summary.topSelf.slice(0, 15)) console.log(`    ${f.pctOfBusy.toFixed(1).padStart(5)} %  ${f.frame}`);
}
