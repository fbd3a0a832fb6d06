import { randomUUID } from 'node:crypto';
import Anthropic, { type APIError } from '@anthropic-ai/sdk';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { anthropic } from '../../lib/core/presets';
import { ANTHROPIC_VERSION } from '../../lib/core/presets/anthropic';
import { FAKE_TOKENS, type FakeApi } from '../fixtures/fake-apis';
import { closeAfterLeakChecks, MEMBER_ROLE, sdkTestPolicy, startKeyward, THROTTLED_ROLE, type KeywardServer } from '../fixtures/keyward-server';

/**
 * The official `@anthropic-ai/sdk` against Keyward over real HTTP, with the `anthropic` preset pointed at a
 * local fake of the Messages API that checks `x-api-key: <real key>` and that an `anthropic-version` is named.
 * The preset's routes are the API's own `/v1/…` paths under the bare origin, so the SDK is given
 * `/api/proxy/anthropic` as its baseURL and nothing else: no URL rewriting.
 */

const PLACEHOLDER = `sk-ant-keyward-placeholder-${randomUUID()}`;
const MODEL = 'claude-haiku-4-5';
const params = { model: MODEL, max_tokens: 256, messages: [{ role: 'user' as const, content: 'Say where keys stay.' }] };

let kw: KeywardServer;
let fake: FakeApi;
let cookie: string;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['anthropic'], (fakes) => [anthropic({ baseUrl: `${fakes.anthropic!.origin}/`, ...sdkTestPolicy })]);
  fake = kw.fakes.anthropic!;
  cookie = await kw.cookie();
});

afterAll(async () => {
  await closeAfterLeakChecks(kw, [PLACEHOLDER, cookie.split('=')[1]!, ...tokens]);
});

beforeEach(() => fake.stepwise(false));

type Options = NonNullable<ConstructorParameters<typeof Anthropic>[0]>;

function browserClient(sessionCookie: string | null, options: Options = {}): Anthropic {
  return new Anthropic({
    baseURL: `${kw.origin}/api/proxy/anthropic`,
    apiKey: PLACEHOLDER,
    defaultHeaders: { 'X-Keyward-CSRF': '1' },
    dangerouslyAllowBrowser: true,
    fetch: sessionCookie === null ? fetch : kw.browserFetch(sessionCookie),
    ...options,
  });
}

/** Cookie-less: the bearer session token as `authToken` (sent as `Authorization: Bearer`). */
async function tokenClient(identity: Parameters<KeywardServer['bearer']>[0] = {}, options: Options = {}): Promise<Anthropic> {
  const token = await kw.bearer(identity);
  tokens.push(token);
  return new Anthropic({ baseURL: `${kw.origin}/api/proxy/anthropic`, authToken: token, ...options });
}

function lastRequest() {
  return fake.requests.at(-1)!;
}

/** Keeps the `anthropic-version` each call leaves the client with (what the SDK itself asks for). */
function keepingVersions(inner: typeof fetch, into: Array<string | null>): typeof fetch {
  return (input, init) => {
    const request = new Request(input, init);
    into.push(request.headers.get('anthropic-version'));
    return inner(request);
  };
}

describe('@anthropic-ai/sdk through Keyward', () => {
  it('messages.create reaches /v1/messages through the preset as the SDK calls it, with its own anthropic-version', async () => {
    const versions: Array<string | null> = [];
    const client = browserClient(cookie, { fetch: keepingVersions(kw.browserFetch(cookie), versions) });
    const message = await client.messages.create(params);
    expect(message.content).toEqual([{ type: 'text', text: FAKE_TOKENS.join('') }]);
    const request = lastRequest();
    expect(request.method).toBe('POST');
    expect(request.url).toBe('/v1/messages');
    // The SDK names the version its response parsing expects; Keyward passes that one on, not its default.
    expect(versions).toHaveLength(1);
    expect(versions[0]).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    // (The SDK's version differs from the preset's default, so a replaced header would show here.)
    expect(versions[0]).not.toBe(ANTHROPIC_VERSION);
    expect(request.headers['anthropic-version']).toBe(versions[0]);
  });

  it("a client that names no version (plain fetch) gets the preset's default anthropic-version", async () => {
    const response = await kw.browserFetch(cookie)(`${kw.origin}/api/proxy/anthropic/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-keyward-csrf': '1' },
      body: JSON.stringify(params),
    });
    expect(response.status).toBe(200);
    const request = lastRequest();
    expect(request.url).toBe('/v1/messages');
    expect(request.headers['anthropic-version']).toBe(ANTHROPIC_VERSION);
  });

  it('messages.create({ stream: true }) streams token by token; the API gets x-api-key, never the client\'s credential', async () => {
    fake.stepwise(true);
    const stream = await browserClient(cookie).messages.create({ ...params, stream: true });
    const seen: string[] = [];
    for await (const event of stream) {
      if (event.type !== 'content_block_delta' || event.delta.type !== 'text_delta') continue;
      seen.push(event.delta.text);
      expect(fake.tokensSent).toBe(seen.length);
      fake.step();
    }
    expect(seen).toEqual(FAKE_TOKENS);
    const request = lastRequest();
    expect(request.url).toBe('/v1/messages');
    expect(request.headers['x-api-key']).toBe(fake.key);
    expect(request.headers.authorization).toBeUndefined();
    expect(request.headers['anthropic-dangerous-direct-browser-access']).toBeUndefined();
    const body = JSON.parse(request.bodyPreview.toString('utf8')) as Record<string, unknown>;
    expect(body).toMatchObject({ model: MODEL, stream: true, metadata: { user_id: 'local:alice' } });
  });

  it('the messages.stream() helper assembles the final message', async () => {
    const stream = browserClient(cookie).messages.stream(params);
    const texts: string[] = [];
    stream.on('text', (delta) => texts.push(delta));
    const message = await stream.finalMessage();
    expect(texts).toEqual(FAKE_TOKENS);
    expect(message.content).toEqual([{ type: 'text', text: FAKE_TOKENS.join('') }]);
    expect(message.usage.output_tokens).toBe(FAKE_TOKENS.length);
  });

  it('a cookie-less client passes its bearer session token as authToken', async () => {
    const client = await tokenClient();
    const message = await client.messages.create(params);
    expect(message.content).toEqual([{ type: 'text', text: FAKE_TOKENS.join('') }]);
    expect(lastRequest().headers['x-api-key']).toBe(fake.key);
    const models = await client.models.list();
    expect(models.data.map((model) => model.id)).toEqual([MODEL]);
  });
});

describe("@anthropic-ai/sdk: Keyward's refusals as the SDK's error classes", () => {
  async function refusal(client: Anthropic) {
    const before = fake.requests.length;
    const error = await client.messages.create(params).catch((caught: unknown) => caught);
    expect(fake.requests.length).toBe(before);
    return error as APIError;
  }
  /** Keyward's error body is `{"error":{"code","message","requestId"}}`; the SDK keeps it as `error.error`. */
  const code = (error: APIError) => (error.error as { error: { code: string } }).error.code;

  it('no session: 401 AuthenticationError', async () => {
    const error = await refusal(browserClient(null));
    expect(error).toBeInstanceOf(Anthropic.AuthenticationError);
    expect(code(error)).toBe('unauthenticated');
    // The SDK reads the message from the body's `error.message`, which Keyward's error has.
    expect(error.apiMessage).toBe('Sign in first: no valid session was found.');
  });

  it('a session without the role: 403 PermissionDeniedError', async () => {
    const error = await refusal(browserClient(await kw.cookie({ roles: ['user'] })));
    expect(error).toBeInstanceOf(Anthropic.PermissionDeniedError);
    expect(code(error)).toBe('forbidden');
  });

  it('without the CSRF header: 403 PermissionDeniedError', async () => {
    const error = await refusal(browserClient(cookie, { defaultHeaders: {} }));
    expect(error).toBeInstanceOf(Anthropic.PermissionDeniedError);
    expect(code(error)).toBe('csrf_failed');
  });

  it("a model outside the preset's allow-list: 400 BadRequestError", async () => {
    const before = fake.requests.length;
    const error = (await browserClient(cookie).messages.create({ ...params, model: 'claude-opus-4-1' }).catch((caught: unknown) => caught)) as APIError;
    expect(error).toBeInstanceOf(Anthropic.BadRequestError);
    expect(code(error)).toBe('contract_violation');
    expect(fake.requests.length).toBe(before);
  });

  it('a server tool the preset does not allow (web search, billed per search): 400 BadRequestError, the API not called; the caller\'s own tools pass', async () => {
    const client = browserClient(cookie);
    const before = fake.requests.length;
    const webSearch = { type: 'web_search_20250305' as const, name: 'web_search' as const, max_uses: 3 };
    const error = (await client.messages.create({ ...params, tools: [webSearch] }).catch((caught: unknown) => caught)) as APIError;
    expect(error).toBeInstanceOf(Anthropic.BadRequestError);
    expect(code(error)).toBe('contract_violation');
    expect(fake.requests.length).toBe(before);
    const weather = { name: 'get_weather', description: 'The weather in a city', input_schema: { type: 'object' as const, properties: { city: { type: 'string' } } } };
    await client.messages.create({ ...params, tools: [weather, { type: 'bash_20250124', name: 'bash' }] });
    const body = JSON.parse(lastRequest().bodyPreview.toString('utf8')) as Record<string, unknown>;
    expect(body.tools).toEqual([weather, { type: 'bash_20250124', name: 'bash' }]);
  });

  it("Keyward's 429: the SDK waits for Retry-After, then the retry succeeds", async () => {
    const client = await tokenClient({ sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] }, { maxRetries: 1 });
    const before = fake.requests.length;
    const seenBefore = kw.responses.length;
    await client.messages.create(params);
    // One retry, and the SDK's own first back-off is under a second: only waiting Retry-After can succeed.
    const message = await client.messages.create(params);
    expect(message.content).toEqual([{ type: 'text', text: FAKE_TOKENS.join('') }]);
    expect(kw.responses.slice(seenBefore).map((seen) => seen.status)).toEqual([200, 429, 200]);
    expect(kw.responses[seenBefore + 1]!.headers['retry-after']).toBe('1');
    expect(fake.requests.length).toBe(before + 2);
  });

  it('429 with no retries left: RateLimitError carrying Retry-After', async () => {
    const client = await tokenClient({ sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] }, { maxRetries: 0 });
    await client.messages.create(params);
    const error = (await client.messages.create(params).catch((caught: unknown) => caught)) as APIError;
    expect(error).toBeInstanceOf(Anthropic.RateLimitError);
    expect(code(error)).toBe('rate_limited');
    expect(error.headers?.get('retry-after')).toBe('1');
  });
});

describe('@anthropic-ai/sdk: aborts', () => {
  it('aborting mid-stream closes the connection to the API', async () => {
    fake.stepwise(true);
    const stream = browserClient(cookie).messages.stream(params);
    const first = new Promise<string>((resolve) => stream.once('text', resolve));
    expect(await first).toBe(FAKE_TOKENS[0]);
    const request = lastRequest();
    stream.abort();
    await expect(stream.finalMessage()).rejects.toBeInstanceOf(Anthropic.APIUserAbortError);
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(fake.tokensSent).toBe(1);
  });
});
