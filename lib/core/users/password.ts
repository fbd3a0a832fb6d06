import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes, scrypt as scryptCallback, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { KeywardError } from '../errors';
import { Slots } from './slots';

/**
 * scrypt from node:crypto (OWASP Password Storage Cheat Sheet: N=2^17, r=8, p=1 is the recommended
 * minimum for scrypt). Format: `scrypt$N$r$p$salt$hash` (base64url), so parameters can be raised later.
 */
const N = 2 ** 17;
const R = 8;
const P = 1;
const KEY_LENGTH = 32;

/** scrypt work (N·r·p, what its time follows) this process has done: a measure for tests, never a timer. */
let workDone = 0;
export function passwordWorkDone(): number {
  return workDone;
}

function scrypt(password: string, salt: Buffer, keyLength: number, options: ScryptOptions): Promise<Buffer> {
  workDone += (options.N ?? 0) * (options.r ?? 0) * (options.p ?? 0);
  return new Promise((resolve, reject) =>
    scryptCallback(password, salt, keyLength, options, (error, key) => (error ? reject(error) : resolve(key))),
  );
}

const maxmem = (n: number, r: number) => 128 * n * r * 2;

/**
 * Password work is bounded per process. Each scrypt at these parameters holds 128 MiB and one thread of
 * libuv's pool (4 threads by default) for a few hundred milliseconds, and the pool is shared with zlib, fs
 * and dns: unbounded sign-in attempts (unknown usernames cost the same, by design) would take all of it and
 * stall every gzip-encoded proxied call behind them. So at most 2 hashes run at once (256 MiB, half the
 * pool) and at most 8 more wait; anyone beyond that gets 503 `sign_in_busy` with Retry-After at once.
 */
export const PASSWORD_CONCURRENCY = 2;
export const PASSWORD_QUEUE = 8;
export const PASSWORD_RETRY_AFTER_SECONDS = 1;
const slots = new Slots(PASSWORD_CONCURRENCY, PASSWORD_QUEUE);
/** Set while the current async context holds a slot, so nested password work does not wait on itself. */
const holding = new AsyncLocalStorage<true>();

/**
 * Runs `work` holding a password slot (waiting in the bounded queue if need be). The sign-in route takes
 * the slot for the whole Auth.js request, before Auth.js runs, so a refusal is a real 503 to the client;
 * verifyPassword and hashPassword take one too, so no caller can run scrypt outside the bound.
 * Throws KeywardError('sign_in_busy') (503, Retry-After) when the queue is full.
 */
export async function withPasswordSlot<T>(work: () => Promise<T>, signal?: AbortSignal, wait = false): Promise<T> {
  if (holding.getStore()) return work();
  const release = await slots.acquire(signal, wait);
  if (!release) throw new KeywardError('sign_in_busy', { headers: { 'retry-after': String(PASSWORD_RETRY_AFTER_SECONDS) } });
  try {
    return await holding.run(true, work);
  } finally {
    release();
  }
}

/** Slots in use and callers waiting (tests). */
export function passwordLoad(): { active: number; waiting: number } {
  return slots.load;
}

/** The longest password the sign-in form takes (lib/next/auth.ts): a longer one could be hashed, never typed in. */
export const MAX_PASSWORD_LENGTH = 1024;

/**
 * A password as it is hashed: Unicode-normalised (NFKC, as NIST SP 800-63B §5.1.1.2 asks), so that one typed
 * with "é" as one code point and one typed with "e" and a combining accent (another keyboard, another system)
 * are one password, and so are a full-width and a plain "A".
 */
function normalised(password: string): string {
  return password.normalize('NFKC');
}

export async function hashPassword(password: string): Promise<string> {
  const text = normalised(password);
  if (text.length < 8) throw new Error('Passwords must be at least 8 characters.');
  const salt = randomBytes(16);
  // Hashing a new password (the CLI, set-up, the decoy hash) is never a client's doing: it waits for a slot,
  // however many are queued, rather than failing; it still never runs beside more than PASSWORD_CONCURRENCY others.
  const key = await withPasswordSlot(() => scrypt(text, salt, KEY_LENGTH, { N, r: R, p: P, maxmem: maxmem(N, R) }), undefined, true);
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

const HASH_FORMAT = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)$/;

/**
 * A hash `verifyPassword` can check safely, read (null for any other). The salt and key must be real: a key cut to
 * one base64url character decodes to no bytes, and a 0-byte scrypt output equals it for every password. The cost is
 * bounded both ways: N a power of two from 2^14, memory (128·N·r bytes) at most 256 MiB and work (N·r·p) at most 4×
 * `hashPassword`'s, so one hand-made hash cannot make each sign-in attempt take gigabytes (the password slots count
 * on 128 MiB each).
 */
function parseHash(value: string): { n: number; r: number; p: number; salt: Buffer; key: Buffer } | null {
  const match = HASH_FORMAT.exec(value);
  if (!match) return null;
  const [n, r, p] = [Number(match[1]), Number(match[2]), Number(match[3])];
  const salt = Buffer.from(match[4]!, 'base64url');
  const key = Buffer.from(match[5]!, 'base64url');
  const cost = n >= 2 ** 14 && (n & (n - 1)) === 0 && r >= 1 && r <= 32 && p >= 1 && p <= 16;
  const bounded = n * r <= 2 ** 21 && n * r * p <= 4 * N * R * P;
  return cost && bounded && salt.length >= 16 && key.length >= 16 && key.length <= 64 ? { n, r, p, salt, key } : null;
}

export function isPasswordHash(value: string): boolean {
  return parseHash(value) !== null;
}

/** A checkable hash's scrypt parameters, or null. */
export function costOf(stored: string): { n: number; r: number; p: number } | null {
  const parsed = parseHash(stored);
  return parsed && { n: parsed.n, r: parsed.r, p: parsed.p };
}

const workOf = (cost: { n: number; r: number; p: number }) => cost.n * cost.r * cost.p;

/**
 * Whether `password` is the one `stored` was made from, compared normalised (see `normalised`). A hash made before
 * passwords were normalised holds the password as it was typed then: a password that normalising changes is also
 * tried as it is, in the same slot. Whether that second scrypt runs depends on the password alone, never on the
 * user or the hash, so an unknown username (the decoy) costs the same as a known one.
 *
 * `floor`: a hash whose cost every verification takes at least (the users file's strongest, `strongestHash`). A
 * weaker hash (hand-made with a smaller N, say) would answer sooner than the decoy an unknown username is checked
 * against and so tell which users exist; it is followed by scrypt with its own N and r on a throwaway salt for the
 * work it lacks (as Django's `harden_runtime` does for PBKDF2's iterations).
 */
export async function verifyPassword(password: string, stored: string, floor: string | null = null): Promise<boolean> {
  const cost = parseHash(stored);
  if (!cost) return false;
  const expected = cost.key;
  const options = { N: cost.n, r: cost.r, p: cost.p, maxmem: maxmem(cost.n, cost.r) };
  const matches = async (text: string) => {
    const key = await scrypt(text, cost.salt, expected.length, options);
    return key.length === expected.length && timingSafeEqual(key, expected);
  };
  const floorCost = floor === null ? null : costOf(floor);
  const text = normalised(password);
  // The decoy runs as many times (one run, or two for a password that normalising changes): so does the pad.
  const runs = text === password ? 1 : 2;
  const lacking = floorCost ? Math.round((runs * (workOf(floorCost) - workOf(cost))) / (cost.n * cost.r)) : 0;
  return withPasswordSlot(async () => {
    let ok = await matches(text);
    if (text !== password) ok = (await matches(password)) || ok;
    if (lacking > 0) await scrypt(text, randomBytes(16), KEY_LENGTH, { N: cost.n, r: cost.r, p: lacking, maxmem: maxmem(cost.n, cost.r) });
    return ok;
  });
}

/** Of these hashes, the one whose verification costs the most (null when none is checkable): `verifyPassword`'s floor. */
export function strongestHash(hashes: Iterable<string>): string | null {
  let strongest: { hash: string; work: number } | null = null;
  for (const hash of hashes) {
    const cost = costOf(hash);
    if (cost && (strongest === null || workOf(cost) > strongest.work)) strongest = { hash, work: workOf(cost) };
  }
  return strongest?.hash ?? null;
}

/**
 * A hash to verify against when the username is unknown, so timing does not reveal which users exist: random
 * salt and key in the format `hashPassword` writes, so verifying costs exactly one scrypt, like a real user's.
 * Made at load, not by hashing on first use (that cost the first unknown name of each process a second scrypt).
 */
const decoys = new Map<string, string>();
const decoyWith = (n: number, r: number, p: number) =>
  `scrypt$${n}$${r}$${p}$${randomBytes(16).toString('base64url')}$${randomBytes(KEY_LENGTH).toString('base64url')}`;
const DECOY = decoyWith(N, R, P);

/**
 * The decoy, with the parameters of `like` (the users file's strongest hash, so an unknown username costs what its
 * users cost; made once per set of parameters), or `hashPassword`'s.
 */
export function decoyHash(like: string | null = null): Promise<string> {
  const cost = like === null ? null : costOf(like);
  if (!cost) return Promise.resolve(DECOY);
  const key = `${cost.n}$${cost.r}$${cost.p}`;
  let decoy = decoys.get(key);
  if (decoy === undefined) decoys.set(key, (decoy = decoyWith(cost.n, cost.r, cost.p)));
  return Promise.resolve(decoy);
}
