import { randomUUID } from 'node:crypto';
import { ApiError, GoogleGenAI, type HttpOptions } from '@google/genai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { gemini } from '../../lib/core/presets';
import { findLeak } from '../fixtures/claims-session';
import { FAKE_TOKENS, type FakeApi } from '../fixtures/fake-apis';
import {
  closeAfterLeakChecks,
  MEMBER_ROLE,
  sdkTestPolicy,
  SLOW_THROTTLED_ROLE,
  startKeyward,
  THROTTLED_ROLE,
  type KeywardServer,
  type SdkIdentity,
} from '../fixtures/keyward-server';

/**
 * The official `@google/genai` SDK against Keyward over real HTTP, with the `gemini` preset pointed at a local
 * fake of the Gemini API that checks the key as the API does (`x-goog-api-key`, or `?key=`: one of them, once).
 * The SDK builds `<baseUrl>/<apiVersion>/models/<model>:<action>` (its default version is `v1`); the preset's
 * base URL already names the version (`…/v1beta/`) and its routes start at `/models`, so the SDK is given
 * Keyward's proxy path as `httpOptions.baseUrl` and an empty `apiVersion` (the SDK leaves the segment out).
 * In the browser the CSRF header goes in `httpOptions.headers` and the browser's fetch adds the cookie;
 * cookie-less, the bearer session token goes in `httpOptions.headers` as `Authorization`. The SDK insists on an
 * `apiKey`: a placeholder, which it sends as `x-goog-api-key` and Keyward replaces.
 */

const PLACEHOLDER = `AIza-keyward-placeholder-${randomUUID()}`;
const MODEL = 'gemini-2.5-flash';
const contents = 'Say where keys stay.';
const PROXY = '/api/proxy/gemini';

let kw: KeywardServer;
let fake: FakeApi;
let cookie: string;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['gemini'], (fakes) => [
    gemini({ baseUrl: `${fakes.gemini!.origin}/v1beta/`, ...sdkTestPolicy }),
  ]);
  fake = kw.fakes.gemini!;
  cookie = await kw.cookie();
});

afterAll(async () => {
  // The SDK's placeholder key (in a header or a query), the session cookie and every bearer token never reach the API.
  await closeAfterLeakChecks(kw, [PLACEHOLDER, cookie.split('=')[1]!, ...tokens]);
});

beforeEach(() => fake.stepwise(false));

/** The browser setup the README documents (the test's fetch adds what the browser would: cookie, Origin). */
function browserClient(sessionCookie: string | null, httpOptions: HttpOptions = {}): GoogleGenAI {
  return new GoogleGenAI({
    apiKey: PLACEHOLDER,
    httpOptions: {
      baseUrl: `${kw.origin}${PROXY}`,
      apiVersion: '',
      headers: { 'X-Keyward-CSRF': '1' },
      fetch: sessionCookie === null ? fetch : kw.browserFetch(sessionCookie),
      ...httpOptions,
    },
  });
}

/** Cookie-less (server code, a mobile app): the bearer session token as `Authorization`, beside the placeholder key. */
async function tokenClient(identity: SdkIdentity = {}, httpOptions: HttpOptions = {}): Promise<GoogleGenAI> {
  const token = await kw.bearer(identity);
  tokens.push(token);
  return new GoogleGenAI({
    apiKey: PLACEHOLDER,
    httpOptions: {
      baseUrl: `${kw.origin}${PROXY}`,
      apiVersion: '',
      headers: { Authorization: `Bearer ${token}` },
      ...httpOptions,
    },
  });
}

/** A new user allowed one call per second (or per 3 s): a rate-limit counter of its own. */
function throttled(role: string): SdkIdentity {
  return { sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, role] };
}

function lastRequest() {
  return fake.requests.at(-1)!;
}

function requestBody(): Record<string, unknown> {
  return JSON.parse(lastRequest().bodyPreview.toString('utf8')) as Record<string, unknown>;
}

/** The SDK's ApiError keeps the error body as JSON in its message: Keyward's is `{"error":{"code",…}}`. */
function keywardCode(error: ApiError): string {
  return (JSON.parse(error.message) as { error: { code: string } }).error.code;
}

describe('@google/genai through Keyward', () => {
  it('generateContentStream streams token by token; the API sees the real key and nothing of the client', async () => {
    fake.stepwise(true);
    const stream = await browserClient(cookie).models.generateContentStream({ model: MODEL, contents });
    const seen: string[] = [];
    for await (const chunk of stream) {
      const text = chunk.text;
      if (!text) continue;
      seen.push(text);
      // The fake sends token N+1 only after step(): the SDK holds token N while the fake has sent exactly N.
      expect(fake.tokensSent).toBe(seen.length);
      fake.step();
    }
    expect(seen).toEqual(FAKE_TOKENS);
    const request = lastRequest();
    expect(request.url).toBe(`/v1beta/models/${MODEL}:streamGenerateContent?alt=sse`);
    expect(request.headers['x-goog-api-key']).toBe(fake.key);
    expect(request.headers.cookie).toBeUndefined();
    expect(request.headers['x-keyward-csrf']).toBeUndefined();
    // The preset fills in its output cap when the SDK sends none.
    expect(requestBody()).toMatchObject({
      contents: [{ role: 'user', parts: [{ text: contents }] }],
      generationConfig: { maxOutputTokens: 4096 },
    });
  });

  it("generateContent, countTokens, models.get and models.list reach the preset's routes as the SDK calls them", async () => {
    const client = browserClient(cookie);
    const response = await client.models.generateContent({
      model: MODEL,
      contents,
      config: { maxOutputTokens: 100_000, temperature: 0.2 },
    });
    expect(response.text).toBe(FAKE_TOKENS.join(''));
    expect(lastRequest().url).toBe(`/v1beta/models/${MODEL}:generateContent`);
    // Over the cap: lowered to it; the other options pass as sent.
    expect(requestBody()).toMatchObject({ generationConfig: { maxOutputTokens: 4096, temperature: 0.2 } });

    expect((await client.models.countTokens({ model: MODEL, contents })).totalTokens).toBe(7);
    expect(lastRequest().url).toBe(`/v1beta/models/${MODEL}:countTokens`);

    expect((await client.models.get({ model: MODEL })).name).toBe(`models/${MODEL}`);
    expect(lastRequest().url).toBe(`/v1beta/models/${MODEL}`);

    const names: string[] = [];
    for await (const model of await client.models.list()) names.push(model.name ?? '');
    expect(names).toEqual([`models/${MODEL}`]);
    expect(lastRequest().url).toBe('/v1beta/models');
  });

  it('a cookie-less client sends its bearer session token as Authorization; Keyward swaps the placeholder for the real key', async () => {
    const client = await tokenClient();
    const response = await client.models.generateContent({ model: MODEL, contents });
    expect(response.text).toBe(FAKE_TOKENS.join(''));
    const request = lastRequest();
    expect(request.headers['x-goog-api-key']).toBe(fake.key);
    expect(request.headers.authorization).toBeUndefined();
  });

  it("the SDK's own version segment (/v1/…) does not fit the preset: 400 bad_path, nothing reaches the API", async () => {
    const before = fake.requests.length;
    // No apiVersion: the SDK sends …/api/proxy/gemini/v1/models/gemini-2.5-flash:generateContent, a ":" where no
    // route of the preset has one.
    const client = new GoogleGenAI({
      apiKey: PLACEHOLDER,
      httpOptions: {
        baseUrl: `${kw.origin}${PROXY}`,
        headers: { 'X-Keyward-CSRF': '1' },
        fetch: kw.browserFetch(cookie),
      },
    });
    const error = (await client.models
      .generateContent({ model: MODEL, contents })
      .catch((caught: unknown) => caught)) as ApiError;
    expect(error).toBeInstanceOf(ApiError);
    expect(error.status).toBe(400);
    expect(keywardCode(error)).toBe('bad_path');
    expect(kw.responses.at(-1)!.url).toBe(`${PROXY}/v1/models/${MODEL}:generateContent`);
    expect(fake.requests.length).toBe(before);
  });
});

describe("@google/genai: Keyward's refusals as the SDK's ApiError", () => {
  async function refusal(client: GoogleGenAI, model = MODEL, config = {}): Promise<ApiError> {
    const before = fake.requests.length;
    const error = await client.models.generateContent({ model, contents, config }).catch((caught: unknown) => caught);
    // Refused by Keyward: nothing reached the API.
    expect(fake.requests.length).toBe(before);
    expect(error).toBeInstanceOf(ApiError);
    return error as ApiError;
  }

  it('no session: 401', async () => {
    const error = await refusal(browserClient(null));
    expect(error.status).toBe(401);
    expect(keywardCode(error)).toBe('unauthenticated');
  });

  it('a session without the role: 403 forbidden', async () => {
    const error = await refusal(browserClient(await kw.cookie({ roles: ['user'] })));
    expect(error.status).toBe(403);
    expect(keywardCode(error)).toBe('forbidden');
  });

  it('without the CSRF header (httpOptions.headers forgotten): 403 csrf_failed', async () => {
    const error = await refusal(browserClient(cookie, { headers: {} }));
    expect(error.status).toBe(403);
    expect(keywardCode(error)).toBe('csrf_failed');
  });

  it("a model outside the preset's allow-list: 404 (the model is in the path, so its routes do not exist)", async () => {
    const error = await refusal(browserClient(cookie), 'gemini-2.5-pro');
    expect(error.status).toBe(404);
    expect(keywardCode(error)).toBe('route_not_found');
  });

  it('more than one candidate: 400 contract_violation', async () => {
    const error = await refusal(browserClient(cookie), MODEL, { candidateCount: 2 });
    expect(error.status).toBe(400);
    expect(keywardCode(error)).toBe('contract_violation');
  });

  it("Keyward's 429 without retryOptions (the SDK's default): ApiError 429 at once", async () => {
    const client = await tokenClient(throttled(THROTTLED_ROLE));
    await client.models.generateContent({ model: MODEL, contents });
    const seenBefore = kw.responses.length;
    const error = await refusal(client);
    expect(error.status).toBe(429);
    expect(keywardCode(error)).toBe('rate_limited');
    // One attempt only, and the Retry-After Keyward sent (the SDK's error does not carry headers).
    expect(kw.responses.slice(seenBefore).map((seen) => [seen.status, seen.headers['retry-after']])).toEqual([
      [429, '1'],
    ]);
  });

  it('with retryOptions the SDK retries a 429 on its own back-off (initialDelay, default 1 s), which covers Retry-After: 1', async () => {
    const client = await tokenClient(throttled(THROTTLED_ROLE), { retryOptions: { attempts: 2 } });
    const before = fake.requests.length;
    const seenBefore = kw.responses.length;
    await client.models.generateContent({ model: MODEL, contents });
    // The retry waits initialDelay × 1–2 (jitter): at least the second Keyward asked for.
    const response = await client.models.generateContent({ model: MODEL, contents });
    expect(response.text).toBe(FAKE_TOKENS.join(''));
    expect(kw.responses.slice(seenBefore).map((seen) => seen.status)).toEqual([200, 429, 200]);
    expect(fake.requests.length).toBe(before + 2);
  });

  it('the SDK does not read Retry-After: a back-off shorter than it meets another 429', async () => {
    // One call per 3 s (Retry-After: 3), and a retry after ~1 ms: the SDK waits its own delay, not the server's.
    const client = await tokenClient(throttled(SLOW_THROTTLED_ROLE), {
      retryOptions: { attempts: 2, initialDelay: 0.001 },
    });
    await client.models.generateContent({ model: MODEL, contents });
    const seenBefore = kw.responses.length;
    const error = await refusal(client);
    expect(error.status).toBe(429);
    expect(kw.responses.slice(seenBefore).map((seen) => [seen.status, seen.headers['retry-after']])).toEqual([
      [429, '3'],
      [429, '3'],
    ]);
  });

  it("the API's own error passes through scrubbed: the SDK's error never holds the real key", async () => {
    fake.failNext({
      status: 400,
      body: { error: { code: 400, message: `API key not valid: ${fake.key}`, status: 'INVALID_ARGUMENT' } },
    });
    const error = (await browserClient(cookie)
      .models.generateContent({ model: MODEL, contents })
      .catch((caught: unknown) => caught)) as ApiError;
    expect(error).toBeInstanceOf(ApiError);
    expect(error.status).toBe(400);
    expect(error.message).toContain('API key not valid');
    expect(findLeak(error.message, [fake.key])).toBeNull();
  });
});

describe('@google/genai: aborts', () => {
  it('aborting mid-stream (config.abortSignal) closes the connection to the API', async () => {
    fake.stepwise(true);
    const controller = new AbortController();
    const stream = await browserClient(cookie).models.generateContentStream({
      model: MODEL,
      contents,
      config: { abortSignal: controller.signal },
    });
    const request = lastRequest();
    const seen: string[] = [];
    const error = await (async () => {
      for await (const chunk of stream) {
        seen.push(chunk.text ?? '');
        controller.abort();
      }
    })().catch((caught: unknown) => caught);
    expect((error as Error).name).toBe('AbortError');
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(seen).toEqual([FAKE_TOKENS[0]]);
    expect(fake.tokensSent).toBe(1);
  });
});
