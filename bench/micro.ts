/**
 * `npx tsx --conditions=react-server bench/micro.ts` — per-request costs of the pipeline's pieces, measured in-process (no server, no
 * network), to explain the side-by-side numbers of `npm run bench`. Each case runs a bounded number of
 * iterations after a warm-up and reports wall time and process CPU time (threadpool included) per operation.
 */
import { hkdf } from '@panva/hkdf';
import { decode, encode } from '@auth/core/jwt';
import { calculateJwkThumbprint, base64url, jwtDecrypt } from 'jose';
import pino from 'pino';
import { createDecipheriv, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { createLogger, logScrubber } from '../lib/core/log/logger';
import { filterRequestHeaders, filterResponseHeaders } from '../lib/core/forward/headers';
import { StreamScrubber } from '../lib/core/respond/scrub-stream';
import { SESSION_COOKIE } from '../lib/core/session/session';
import { round } from './stats';

interface Case {
  readonly name: string;
  readonly iterations: number;
  readonly run: () => unknown;
}

async function measure({ name, iterations, run }: Case) {
  for (let i = 0; i < Math.min(2000, iterations); i++) await run(); // warm-up (JIT)
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < iterations; i++) await run();
  const wallUs = ((performance.now() - t0) * 1000) / iterations;
  const cpu = process.cpuUsage(cpu0);
  const cpuUs = (cpu.user + cpu.system) / iterations;
  return { name, iterations, wallUsPerOp: round(wallUs, 1), cpuUsPerOp: round(cpuUs, 1) };
}

const secret = randomBytes(32).toString('base64url');
const apiKey = `benchkey_${randomBytes(24).toString('base64url')}`;
const salt = SESSION_COOKIE;
const claims = { sub: 'local:bench', name: 'bench', roles: ['user'], sid: randomUUID() };
const token = await encode({ token: claims, secret, salt, maxAge: 3600 });

// What a cache of the derived key would leave per request: jose's jwtDecrypt with the key ready.
const derived = await hkdf('sha256', secret, salt, `Auth.js Generated Encryption Key (${salt})`, 64);
const decryptOptions = { clockTolerance: 15, keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256CBC-HS512', 'A256GCM'] };

/**
 * The same JWE (dir + A256CBC-HS512, RFC 7516 / RFC 7518 §5.2.2) opened with synchronous node:crypto and a
 * cached key: only here to show what the WebCrypto job round trips cost. Not a recommendation to hand-roll
 * JOSE; checks the header and tag, nothing else.
 */
function openJweSync(compact: string, key: Uint8Array): Record<string, unknown> {
  const [protectedHeader, encryptedKey, iv, ciphertext, tag] = compact.split('.');
  if (encryptedKey !== '' || !protectedHeader || !iv || !ciphertext || !tag) throw new Error('bad JWE');
  const header = JSON.parse(Buffer.from(protectedHeader, 'base64url').toString('utf8')) as { alg?: string; enc?: string };
  if (header.alg !== 'dir' || header.enc !== 'A256CBC-HS512') throw new Error('unexpected JWE algorithms');
  const aad = Buffer.from(protectedHeader, 'ascii');
  const ivBytes = Buffer.from(iv, 'base64url');
  const cipherBytes = Buffer.from(ciphertext, 'base64url');
  const al = Buffer.alloc(8);
  al.writeBigUInt64BE(BigInt(aad.length * 8));
  const mac = createHmac('sha512', key.subarray(0, 32)).update(aad).update(ivBytes).update(cipherBytes).update(al).digest().subarray(0, 32);
  const tagBytes = Buffer.from(tag, 'base64url');
  if (tagBytes.length !== 32 || !timingSafeEqual(mac, tagBytes)) throw new Error('bad tag');
  const decipher = createDecipheriv('aes-256-cbc', key.subarray(32), ivBytes);
  const plain = Buffer.concat([decipher.update(cipherBytes), decipher.final()]);
  return JSON.parse(plain.toString('utf8')) as Record<string, unknown>;
}
if (openJweSync(token, derived).sid !== claims.sid) throw new Error('openJweSync does not round-trip');

// A verified-claims cache keyed by the exact cookie value (bounded, entries never outlive `exp`).
const claimsCache = new Map<string, { claims: unknown; exp: number }>([[token, { claims, exp: Date.now() + 3600_000 }]]);

logScrubber.add([secret, apiKey, randomBytes(32).toString('base64url'), randomBytes(32).toString('base64url')]);
const devNull = pino.destination({ dest: '/dev/null', sync: true });
const keywardLogger = createLogger({ destination: devNull });
const plainLogger = pino({ base: { app: 'keyward' } }, devNull);
// pino's default destination (what `next start` uses): sonic-boom on fd 1 with asynchronous fs.write calls.
const devNullAsync = pino.destination({ dest: '/dev/null', sync: false });
const asyncLogger = createLogger({ destination: devNullAsync });
const event = {
  requestId: randomUUID(),
  userId: 'local:bench',
  sessionId: claims.sid,
  upstream: 'bench',
  route: '/small',
  method: 'GET',
  status: 200,
  keyFingerprint: 'sha256:0123456789abcdef',
  bytesIn: 0,
  bytesOut: 211,
  durationMs: 3.21,
  outcome: 'complete',
  errorCode: null,
};

const browserHeaders = new Headers({
  host: '127.0.0.1:3000',
  accept: 'application/json',
  'accept-encoding': 'gzip, deflate, br',
  'accept-language': 'en-US,en;q=0.9',
  cookie: `${SESSION_COOKIE}=${token}`,
  'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
  'x-keyward-csrf': '1',
  'sec-fetch-site': 'same-origin',
  'sec-fetch-mode': 'cors',
  referer: 'http://127.0.0.1:3000/',
});
const upstreamHeaders = { 'content-type': 'application/json', 'content-length': '211', date: new Date().toUTCString(), connection: 'keep-alive', 'keep-alive': 'timeout=65' };
const small = Buffer.from(JSON.stringify({ ...claims, description: 'x'.repeat(120) }));
const chunk64k = Buffer.alloc(64 * 1024, 'abcdefghijklmnopqrstuvwxyz0123456789\n');
const json64k = Buffer.alloc(
  64 * 1024,
  `${JSON.stringify({ id: 'cmpl_8f3a2', created: 1733011200, model: 'gpt-4.1-mini', usage: { prompt_tokens: 1024 }, text: 'Lorem ipsum dolor sit amet, consectetur adipiscing elit.', url: 'https://example.com/v1/items?page=2' })}\n`,
);

const cases: Case[] = [
  { name: 'session: @auth/core/jwt decode (HKDF + thumbprint + JWE decrypt)', iterations: 5000, run: () => decode({ token, secret, salt }) },
  { name: 'session:   HKDF key derivation alone', iterations: 5000, run: () => hkdf('sha256', secret, salt, `Auth.js Generated Encryption Key (${salt})`, 64) },
  { name: 'session:   JWK thumbprint alone', iterations: 5000, run: () => calculateJwkThumbprint({ kty: 'oct', k: base64url.encode(derived) }, 'sha512') },
  { name: 'session:   jwtDecrypt with a cached derived key', iterations: 5000, run: () => jwtDecrypt(token, derived, decryptOptions) },
  {
    name: 'session:   verified-claims cache hit (Map lookup + expiry check)',
    iterations: 50000,
    run: () => {
      const hit = claimsCache.get(token);
      return hit && hit.exp > Date.now() ? hit.claims : null;
    },
  },
  { name: 'session:   same JWE with sync node:crypto + cached key', iterations: 20000, run: () => openJweSync(token, derived) },
  { name: 'log: Keyward pino line, sync destination (redact + scrub hook)', iterations: 20000, run: () => keywardLogger.info({ proxy: event }, 'proxy') },
  { name: 'log:   same, async destination (pino default: fs.write per line)', iterations: 20000, run: () => asyncLogger.info({ proxy: event }, 'proxy') },
  { name: 'log:   plain pino line (same object)', iterations: 20000, run: () => plainLogger.info({ proxy: event }, 'proxy') },
  { name: 'log:   SecretScrubber.scrub on one line', iterations: 20000, run: () => logScrubber.scrub(JSON.stringify({ level: 30, time: Date.now(), app: 'keyward', proxy: event, msg: 'proxy' })) },
  {
    name: 'respond: StreamScrubber new + push 211 B + flush',
    iterations: 20000,
    run: () => {
      const scrubber = new StreamScrubber([apiKey]);
      scrubber.push(small);
      return scrubber.flush();
    },
  },
  {
    name: 'respond: StreamScrubber push 1 MiB in 64 KiB chunks',
    iterations: 300,
    run: () => {
      const scrubber = new StreamScrubber([apiKey]);
      for (let i = 0; i < 16; i++) scrubber.push(chunk64k);
      return scrubber.flush();
    },
  },
  {
    // The same, as body.ts could hand the pieces on: no copy of a chunk behind a tail held back from the one
    // before (this data ends every chunk in "i", which starts a base64 form of the key, so every chunk has one).
    name: 'respond:   same with pushParts (no copy behind a held-back tail)',
    iterations: 300,
    run: () => {
      const scrubber = new StreamScrubber([apiKey]);
      for (let i = 0; i < 16; i++) scrubber.pushParts(chunk64k);
      return scrubber.flush();
    },
  },
  {
    name: 'respond: StreamScrubber push 1 MiB of JSON in 64 KiB chunks',
    iterations: 300,
    run: () => {
      const scrubber = new StreamScrubber([apiKey]);
      for (let i = 0; i < 16; i++) scrubber.push(json64k);
      return scrubber.flush();
    },
  },
  { name: 'forward: filterRequestHeaders (browser headers)', iterations: 20000, run: () => filterRequestHeaders(browserHeaders, new Set()) },
  {
    name: 'respond: filterResponseHeaders + 3 set()',
    iterations: 20000,
    run: () => {
      const out = filterResponseHeaders(upstreamHeaders, new Set(), [apiKey]);
      out.set('cache-control', 'private, no-store');
      out.set('x-content-type-options', 'nosniff');
      out.set('x-request-id', 'x');
      return out;
    },
  },
  { name: 'misc: crypto.randomUUID', iterations: 50000, run: () => randomUUID() },
  { name: 'misc: new URL(request.url)', iterations: 50000, run: () => new URL('http://127.0.0.1:3000/api/proxy/bench/small?x=1') },
];

console.log(`micro: node ${process.version}; wall and CPU time per operation (µs), sequential\n`);
const results = [];
for (const c of cases) {
  const result = await measure(c);
  results.push(result);
  console.log(`${String(result.cpuUsPerOp).padStart(8)} µs CPU ${String(result.wallUsPerOp).padStart(8)} µs wall  ${c.name}`);
}
devNull.flushSync();
await new Promise((done) => devNullAsync.flush(() => done(undefined)));
console.log(JSON.stringify({ micro: results }));
