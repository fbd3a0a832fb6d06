import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy, RECHECK_AFTER_MS } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { MemoryStore } from '../../lib/store/memory';
import { capturingLogger, findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * A call whose body is still arriving when its session or key is revoked (README "Instant revocation"): step 8
 * read both, but the body (step 10) has no deadline in all, only one per chunk. Past RECHECK_AFTER_MS the call
 * reads them again before it is forwarded, and is refused as a new call is; what it reserved is given back
 * (quota: one call a day). A call forwarded sooner reads nothing more. Through the real pipeline, a real
 * node:http upstream and the in-memory store (its reads counted); the runtime's clock is the test's, moved on
 * while the body waits.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const ALICE = 'local:alice';
const secrets = testSessionSecrets();
const firstKey = randomSecret('first');
const secondKey = randomSecret('second');
const vaultSecret = randomSecret('vault');
const logs = capturingLogger();

/** The in-memory store, with every key it was asked for by a call's reads (get, getMany), one entry a read. */
class CountingStore extends MemoryStore {
  reads: string[][] = [];

  override async get(key: string) {
    this.reads.push([key]);
    return super.get(key);
  }

  override async getMany(keys: readonly string[]) {
    this.reads.push([...keys]);
    return super.getMany(keys);
  }

  /** Reads since the last take that asked for the session's revocation marks. */
  takeRevocationReads(): number {
    const count = this.reads.filter((keys) => keys.some((key) => key.startsWith('rev:sid:'))).length;
    this.reads = [];
    return count;
  }
}

let upstream: TestUpstream;
let clock = Date.now();

beforeAll(async () => {
  upstream = await startUpstream();
});

afterAll(async () => {
  await upstream.close();
  expect(findLeak(logs.lines.join('\n'), [firstKey, secondKey]), 'a key in a log line').toBeNull();
});

function runtimeWith(store: CountingStore, versions: boolean): Runtime {
  return createRuntime({
    env: { ...secrets, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, FIRST_KEY: firstKey, SECOND_KEY: secondKey, KEYWARD_VAULT_SECRET: vaultSecret },
    upstreams: [
      defineUpstream('svc', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'FIRST_KEY' } },
        keys: versions ? { versions: [{ env: 'SECOND_KEY' }] } : {},
        quotas: [{ by: 'user', requests: 1, period: 'day' }],
        timeoutMs: 20_000,
        routes: [
          {
            method: 'POST',
            path: '/items',
            roles: ['user'],
            body: { type: 'object', properties: { a: { type: 'integer' } } },
          },
        ],
      }),
    ],
    store,
    logger: logs.logger,
    now: () => clock,
  });
}

const cookieOf = (authMs?: number) =>
  sessionCookie(secrets.AUTH_SECRET, { sub: ALICE, roles: ['user'], ...(authMs === undefined ? {} : { authMs }) });

function post(runtime: Runtime, cookie: string, body: string | ReadableStream<Uint8Array>): Promise<Response> {
  const headers = { cookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN, 'content-type': 'application/json' };
  const init =
    typeof body === 'string' ? { method: 'POST', headers, body } : { method: 'POST', headers, body, duplex: 'half' };
  return handleProxy(
    new Request(`${APP_ORIGIN}/api/proxy/svc/items`, init as RequestInit),
    { upstream: 'svc', path: ['items'] },
    runtime,
  );
}

/**
 * A call whose body sends `{"a":` and then waits: `reading` resolves once the pipeline asks for more (step 10,
 * so after step 8's round trip), `finish` sends the rest.
 */
function slowCall(
  runtime: Runtime,
  cookie: string,
): { answer: Promise<Response>; reading: Promise<void>; finish(): void } {
  let finish!: () => void;
  let reading!: () => void;
  const asked = new Promise<void>((resolve) => (reading = resolve));
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode('{"a":'));
      finish = () => {
        controller.enqueue(new TextEncoder().encode('1}'));
        controller.close();
      };
    },
    pull() {
      reading();
    },
  });
  return { answer: post(runtime, cookie, body), reading: asked, finish };
}

async function errorOf(response: Response): Promise<{ status: number; code: string | undefined }> {
  const { status, body } = await responseText(response);
  expect(findLeak(body, [firstKey, secondKey])).toBeNull();
  return { status, code: (JSON.parse(body) as { error?: { code: string } }).error?.code };
}

/** The version the ring serves now: its fingerprint, and the key it holds. */
async function serving(runtime: Runtime): Promise<{ fingerprint: string; key: string }> {
  const [ring] = await runtime.keyRings.list();
  const version = ring!.versions.find((v) => v.status === 'serving')!;
  return { fingerprint: version.fingerprint, key: version.id === 'env:FIRST_KEY' ? firstKey : secondKey };
}

/**
 * A slow call (`slowCall`) that `revoke` revokes something of while its body waits, and a new call's answer
 * then; the runtime's clock is then moved past RECHECK_AFTER_MS and the body finished. Returns both answers.
 */
async function revokedWhileArriving(runtime: Runtime, cookie: string, revoke: () => Promise<unknown>) {
  const slow = slowCall(runtime, cookie);
  await slow.reading;
  await revoke();
  const newCall = await post(runtime, cookie, '{"a":2}');
  clock += RECHECK_AFTER_MS + 1_000;
  slow.finish();
  return { slow: await slow.answer, newCall };
}

describe('a call whose body was still arriving is checked again before it is forwarded', () => {
  it('is refused when its only key was revoked meanwhile, as a new call is, and sends nothing', async () => {
    const runtime = runtimeWith(new CountingStore(), false);
    const before = upstream.requests.length;
    const { slow, newCall } = await revokedWhileArriving(runtime, await cookieOf(), async () =>
      runtime.keyRings.revoke((await serving(runtime)).fingerprint),
    );
    expect(await errorOf(newCall)).toEqual({ status: 503, code: 'credential_unavailable' });
    expect(await errorOf(slow)).toEqual({ status: 503, code: 'credential_unavailable' });
    expect(upstream.requests.length).toBe(before);
  });

  it('never sends a revoked version when the ring serves another one now, and gives back its quota', async () => {
    const runtime = runtimeWith(new CountingStore(), true);
    const cookie = await cookieOf();
    const before = upstream.requests.length;
    const revoked = await serving(runtime);
    // No new call while the body waits: it would spend the day's one call.
    const slow = slowCall(runtime, cookie);
    await slow.reading;
    await runtime.keyRings.revoke(revoked.fingerprint);
    clock += RECHECK_AFTER_MS + 1_000;
    slow.finish();
    expect(await errorOf(await slow.answer)).toEqual({ status: 503, code: 'credential_unavailable' });
    expect(upstream.requests.length).toBe(before);
    // The quota was given back: a new call goes out, with the version still in force.
    const next = await post(runtime, cookie, '{"a":2}');
    expect(next.status).toBe(200);
    await responseText(next);
    expect(upstream.requests.slice(before).map((request) => request.headers['x-api-key'])).toEqual([
      (await serving(runtime)).key,
    ]);
    expect((await serving(runtime)).key).not.toBe(revoked.key);
  });

  it('goes out with its key when a rotation switched meanwhile: that key still serves (its grace window), nothing is refreshed or swapped', async () => {
    const runtime = runtimeWith(new CountingStore(), false);
    const before = upstream.requests.length;
    const slow = slowCall(runtime, await cookieOf());
    await slow.reading;
    const rotation = await runtime.keyRings.rotate('svc', randomSecret('rotated'), { skipCanary: true, actor: 'local:root' });
    expect(rotation.state).toBe('switched');
    clock += RECHECK_AFTER_MS + 1_000;
    slow.finish();
    const answer = await slow.answer;
    expect(answer.status).toBe(200);
    await responseText(answer);
    expect(upstream.requests.slice(before).map((request) => request.headers['x-api-key'])).toEqual([firstKey]);
  });

  it('is refused 401 when its user signed out everywhere meanwhile, and gives back its quota', async () => {
    const runtime = runtimeWith(new CountingStore(), false);
    const before = upstream.requests.length;
    const { slow, newCall } = await revokedWhileArriving(runtime, await cookieOf(), () =>
      runtime.revocations.revokeUser(ALICE),
    );
    expect(await errorOf(newCall)).toEqual({ status: 401, code: 'unauthenticated' });
    expect(await errorOf(slow)).toEqual({ status: 401, code: 'unauthenticated' });
    expect(upstream.requests.length).toBe(before);
    // Signed in again (after the mark): the day's one call is still there.
    const next = await post(runtime, await cookieOf(clock + 1), '{"a":2}');
    expect(next.status).toBe(200);
    await responseText(next);
    expect(upstream.requests.length).toBe(before + 1);
  });

  it('reads the store again only for a call whose round trip is older than RECHECK_AFTER_MS', async () => {
    const store = new CountingStore();
    const runtime = runtimeWith(store, false);
    const quick = async (
      call: { answer: Promise<Response>; reading: Promise<void>; finish(): void },
      waitMs: number,
    ) => {
      await call.reading;
      clock += waitMs;
      call.finish();
      const response = await call.answer;
      expect(response.status).toBe(200);
      await responseText(response);
    };
    // Each call another user's: the quota is one call a day per user.
    const someone = (name: string) => sessionCookie(secrets.AUTH_SECRET, { sub: `local:${name}`, roles: ['user'] });
    await quick(slowCall(runtime, await someone('ann')), 0);
    expect(store.takeRevocationReads()).toBe(1);
    await quick(slowCall(runtime, await someone('bob')), RECHECK_AFTER_MS);
    expect(store.takeRevocationReads()).toBe(1);
    await quick(slowCall(runtime, await someone('cid')), RECHECK_AFTER_MS + 1);
    expect(store.takeRevocationReads()).toBe(2);
  });
});
