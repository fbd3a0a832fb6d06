import { randomUUID } from 'node:crypto';
import { createAnthropic } from '@ai-sdk/anthropic';
import { createOpenAI } from '@ai-sdk/openai';
import { AbstractChat, APICallError, DirectChatTransport, streamText, ToolLoopAgent, type ChatState, type ChatStatus, type ChatTransport, type LanguageModel, type UIMessage } from 'ai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { anthropic, openai } from '../../lib/core/presets';
import { FAKE_TOKENS, type FakeApi } from '../fixtures/fake-apis';
import { closeAfterLeakChecks, MEMBER_ROLE, sdkTestPolicy, SLOW_THROTTLED_ROLE, startKeyward, THROTTLED_ROLE, type KeywardServer } from '../fixtures/keyward-server';

/**
 * The Vercel AI SDK (`ai` with `@ai-sdk/openai` and `@ai-sdk/anthropic`) against Keyward over real HTTP, with
 * the `openai` and `anthropic` presets pointed at local fakes of both APIs. The providers take Keyward's proxy
 * path as `baseURL` (`@ai-sdk/anthropic`'s default base ends in `/v1`, and so does its Keyward one), a
 * placeholder `apiKey`, the CSRF header in `headers`; the browser's fetch adds the cookie.
 * `openai('…')` calls the Responses API, `openai.chat('…')` chat completions.
 */

const PLACEHOLDER = `keyward-placeholder-${randomUUID()}`;
const OPENAI_MODEL = 'gpt-4.1-mini';
const ANTHROPIC_MODEL = 'claude-haiku-4-5';
const prompt = 'Say where keys stay.';
/** The `anthropic` preset's output-token cap here (its `maxOutputTokens`). */
const ANTHROPIC_CAP = 2000;

let kw: KeywardServer;
let openaiFake: FakeApi;
let anthropicFake: FakeApi;
let cookie: string;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['openai', 'anthropic'], (fakes) => [
    openai({ baseUrl: `${fakes.openai!.origin}/v1/`, ...sdkTestPolicy }),
    anthropic({ baseUrl: `${fakes.anthropic!.origin}/`, maxOutputTokens: ANTHROPIC_CAP, ...sdkTestPolicy }),
  ]);
  openaiFake = kw.fakes.openai!;
  anthropicFake = kw.fakes.anthropic!;
  cookie = await kw.cookie();
});

afterAll(async () => {
  await closeAfterLeakChecks(kw, [PLACEHOLDER, cookie.split('=')[1]!, ...tokens]);
});

beforeEach(() => {
  openaiFake.stepwise(false);
  anthropicFake.stepwise(false);
});

/** The browser setup: placeholder key, CSRF header, the browser's same-origin fetch (cookie added by it). */
function browserOpenAI(sessionCookie: string | null, headers: Record<string, string> = { 'X-Keyward-CSRF': '1' }) {
  return createOpenAI({
    baseURL: `${kw.origin}/api/proxy/openai`,
    apiKey: PLACEHOLDER,
    headers,
    fetch: sessionCookie === null ? fetch : kw.browserFetch(sessionCookie),
  });
}

function browserAnthropic(sessionCookie: string) {
  return createAnthropic({
    baseURL: `${kw.origin}/api/proxy/anthropic/v1`,
    apiKey: PLACEHOLDER,
    headers: { 'X-Keyward-CSRF': '1' },
    fetch: kw.browserFetch(sessionCookie),
  });
}

/**
 * Streams the model's text, checking that each delta arrives while the fake has sent exactly that many tokens.
 * Returns the request body the SDK sent (as it reports it).
 */
async function expectTokenByToken(model: LanguageModel, fake: FakeApi, maxOutputTokens?: number): Promise<Record<string, unknown>> {
  fake.stepwise(true);
  const errors: unknown[] = [];
  // include.requestBody: the step result keeps the body the SDK sent (dropped by default).
  const result = streamText({ model, prompt, maxOutputTokens, include: { requestBody: true }, onError: ({ error }) => void errors.push(error) });
  const seen: string[] = [];
  for await (const delta of result.textStream) {
    seen.push(delta);
    expect(fake.tokensSent).toBe(seen.length);
    fake.step();
  }
  expect(errors).toEqual([]);
  expect(seen).toEqual(FAKE_TOKENS);
  const { body } = (await result.finalStep).request;
  return (typeof body === 'string' ? JSON.parse(body) : body) as Record<string, unknown>;
}

/** The JSON body the fake received last. */
function receivedBody(fake: FakeApi): Record<string, unknown> {
  return JSON.parse(fake.requests.at(-1)!.bodyPreview.toString('utf8')) as Record<string, unknown>;
}

/** streamText's failure: streamText does not throw, it reports to onError (and the text stream ends). */
async function streamError(model: LanguageModel, maxRetries = 0): Promise<{ error: unknown; text: string }> {
  const errors: unknown[] = [];
  const result = streamText({ model, prompt, maxRetries, onError: ({ error }) => void errors.push(error) });
  let text = '';
  for await (const delta of result.textStream) text += delta;
  expect(errors).toHaveLength(1);
  return { error: errors[0], text };
}

describe('AI SDK streamText through Keyward', () => {
  it("openai('…') (the Responses API) streams token by token", async () => {
    await expectTokenByToken(browserOpenAI(cookie)(OPENAI_MODEL), openaiFake);
    const request = openaiFake.requests.at(-1)!;
    expect(request.url).toBe('/v1/responses');
    expect(request.headers.authorization).toBe(`Bearer ${openaiFake.key}`);
  });

  it("openai.chat('…') (chat completions) streams token by token", async () => {
    await expectTokenByToken(browserOpenAI(cookie).chat(OPENAI_MODEL), openaiFake);
    expect(openaiFake.requests.at(-1)!.url).toBe('/v1/chat/completions');
  });

  it("createAnthropic streams token by token; maxOutputTokens within the preset's cap goes through as asked", async () => {
    await expectTokenByToken(browserAnthropic(cookie)(ANTHROPIC_MODEL), anthropicFake, 1024);
    const request = anthropicFake.requests.at(-1)!;
    expect(request.url).toBe('/v1/messages');
    expect(request.headers['x-api-key']).toBe(anthropicFake.key);
    expect(request.headers['anthropic-version']).toBe('2023-06-01');
    expect(receivedBody(anthropicFake)).toMatchObject({ max_tokens: 1024, metadata: { user_id: 'local:alice' } });
  });

  it("createAnthropic's default call (the model's maximum output) succeeds, lowered to the preset's cap", async () => {
    const sent = await expectTokenByToken(browserAnthropic(cookie)(ANTHROPIC_MODEL), anthropicFake);
    // Without maxOutputTokens, @ai-sdk/anthropic asks for the model's own maximum (64 000 for claude-haiku-4-5).
    expect(sent.max_tokens).toBeGreaterThan(ANTHROPIC_CAP);
    expect(receivedBody(anthropicFake).max_tokens).toBe(ANTHROPIC_CAP);
  });

  it('a cookie-less client: the bearer session token as apiKey (openai) or authToken (anthropic)', async () => {
    const openaiToken = await kw.bearer();
    const anthropicToken = await kw.bearer();
    tokens.push(openaiToken, anthropicToken);
    const viaOpenAI = streamText({ model: createOpenAI({ baseURL: `${kw.origin}/api/proxy/openai`, apiKey: openaiToken })(OPENAI_MODEL), prompt });
    expect(await viaOpenAI.text).toBe(FAKE_TOKENS.join(''));
    const viaAnthropic = streamText({
      model: createAnthropic({ baseURL: `${kw.origin}/api/proxy/anthropic/v1`, authToken: anthropicToken })(ANTHROPIC_MODEL),
      prompt,
    });
    expect(await viaAnthropic.text).toBe(FAKE_TOKENS.join(''));
  });
});

describe("AI SDK: Keyward's refusals as APICallError", () => {
  it('no session: 401, not retryable', async () => {
    const before = openaiFake.requests.length;
    const { error } = await streamError(browserOpenAI(null)(OPENAI_MODEL), 2);
    expect(APICallError.isInstance(error)).toBe(true);
    const call = error as APICallError;
    expect(call.statusCode).toBe(401);
    expect(call.isRetryable).toBe(false);
    expect(JSON.parse(call.responseBody!)).toMatchObject({ error: { code: 'unauthenticated' } });
    expect(openaiFake.requests.length).toBe(before);
  });

  it('a session without the role: 403; without the CSRF header: 403', async () => {
    const forbidden = (await streamError(browserOpenAI(await kw.cookie({ roles: ['user'] }))(OPENAI_MODEL))).error as APICallError;
    expect(forbidden.statusCode).toBe(403);
    expect(JSON.parse(forbidden.responseBody!)).toMatchObject({ error: { code: 'forbidden' } });
    const noCsrf = (await streamError(browserOpenAI(cookie, {})(OPENAI_MODEL))).error as APICallError;
    expect(noCsrf.statusCode).toBe(403);
    expect(JSON.parse(noCsrf.responseBody!)).toMatchObject({ error: { code: 'csrf_failed' } });
  });

  it("Keyward's 429: streamText waits for Retry-After, then the retry succeeds", async () => {
    // One call per 3 s: the AI SDK's own first back-off (2 s) would meet another 429, and one retry is allowed.
    const token = await kw.bearer({ sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, SLOW_THROTTLED_ROLE] });
    tokens.push(token);
    const model = createOpenAI({ baseURL: `${kw.origin}/api/proxy/openai`, apiKey: token }).chat(OPENAI_MODEL);
    const before = openaiFake.requests.length;
    const seenBefore = kw.responses.length;
    expect(await streamText({ model, prompt }).text).toBe(FAKE_TOKENS.join(''));
    expect(await streamText({ model, prompt, maxRetries: 1 }).text).toBe(FAKE_TOKENS.join(''));
    expect(kw.responses.slice(seenBefore).map((seen) => seen.status)).toEqual([200, 429, 200]);
    expect(kw.responses[seenBefore + 1]!.headers['retry-after']).toBe('3');
    expect(openaiFake.requests.length).toBe(before + 2);
  });

  it('429 with no retries left: APICallError with statusCode 429 and Retry-After', async () => {
    const token = await kw.bearer({ sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] });
    tokens.push(token);
    const model = createOpenAI({ baseURL: `${kw.origin}/api/proxy/openai`, apiKey: token })(OPENAI_MODEL);
    expect(await streamText({ model, prompt }).text).toBe(FAKE_TOKENS.join(''));
    const { error } = await streamError(model, 0);
    const call = error as APICallError;
    expect(APICallError.isInstance(call)).toBe(true);
    expect(call.statusCode).toBe(429);
    expect(call.isRetryable).toBe(true);
    expect(call.responseHeaders?.['retry-after']).toBe('1');
  });
});

describe('AI SDK: aborts', () => {
  it('aborting streamText mid-stream closes the connection to the API', async () => {
    openaiFake.stepwise(true);
    const controller = new AbortController();
    const result = streamText({ model: browserOpenAI(cookie)(OPENAI_MODEL), prompt, abortSignal: controller.signal });
    const seen: string[] = [];
    let request: ReturnType<typeof openaiFake.requests.at>;
    const reading = (async () => {
      for await (const delta of result.textStream) {
        seen.push(delta);
        request = openaiFake.requests.at(-1);
        controller.abort();
      }
    })();
    await reading.catch(() => {});
    expect(seen).toEqual([FAKE_TOKENS[0]]);
    await request!.closed;
    expect(request!.closedEarly).toBe(true);
    expect(openaiFake.tokensSent).toBe(1);
  });
});

/**
 * What `useChat` runs, without React: `useChat` (@ai-sdk/react) is a `Chat` (AbstractChat with a React state)
 * read through useSyncExternalStore. With `DirectChatTransport` the agent runs where the hook runs (the
 * browser), and its model calls go through Keyward like any other provider call. This drives AbstractChat
 * with a plain state object; rendering the hook itself needs a browser (see the README).
 */
class PlainChatState<M extends UIMessage> implements ChatState<M> {
  status: ChatStatus = 'ready';
  error: Error | undefined = undefined;
  messages: M[] = [];
  constructor(private readonly onUpdate: (message: M) => void) {}
  pushMessage = (message: M) => {
    this.messages = [...this.messages, message];
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index: number, message: M) => {
    this.messages = this.messages.map((existing, i) => (i === index ? message : existing));
    this.onUpdate(message);
  };
  snapshot = <T,>(thing: T): T => structuredClone(thing);
}

class PlainChat<M extends UIMessage> extends AbstractChat<M> {
  constructor(transport: ChatTransport<M>, onUpdate: (message: M) => void) {
    super({ transport, state: new PlainChatState<M>(onUpdate) });
  }
}

const textOf = (message: UIMessage) => message.parts.map((part) => (part.type === 'text' ? part.text : '')).join('');

describe("AI SDK useChat's Chat with DirectChatTransport (the agent in the browser, its model through Keyward)", () => {
  it('the assistant message grows token by token', async () => {
    openaiFake.stepwise(true);
    const agent = new ToolLoopAgent({ model: browserOpenAI(cookie)(OPENAI_MODEL) });
    let shown = '';
    let tokensShown = 0;
    const chat = new PlainChat(new DirectChatTransport({ agent }), (message) => {
      const text = textOf(message);
      if (message.role !== 'assistant' || text === shown) return;
      shown = text;
      tokensShown += 1;
      // What the page would render now: the first N tokens, while the fake has sent exactly N.
      expect(text).toBe(FAKE_TOKENS.slice(0, tokensShown).join(''));
      expect(openaiFake.tokensSent).toBe(tokensShown);
      openaiFake.step();
    });
    await chat.sendMessage({ text: prompt });
    expect(chat.error).toBeUndefined();
    expect(chat.messages.map((message) => [message.role, textOf(message)])).toEqual([
      ['user', prompt],
      ['assistant', FAKE_TOKENS.join('')],
    ]);
    expect(openaiFake.requests.at(-1)!.url).toBe('/v1/responses');
  });

  it("Keyward's 401 becomes the chat's error (its message once the transport's onError passes it on)", async () => {
    const agentErrors: unknown[] = [];
    const agent = new ToolLoopAgent({ model: browserOpenAI(null)(OPENAI_MODEL), maxRetries: 0, onError: ({ error }) => void agentErrors.push(error) });
    // The UI message stream hides error messages by default (written for a server talking to a browser);
    // here both ends are the browser, and Keyward's messages are written for it.
    const onError = (error: unknown) => (APICallError.isInstance(error) ? `${error.statusCode}: ${error.message}` : 'An error occurred.');
    const chat = new PlainChat(new DirectChatTransport({ agent, onError }), () => {});
    await chat.sendMessage({ text: prompt });
    expect(chat.error?.message).toBe('401: Sign in first: no valid session was found.');
    expect(agentErrors.map((error) => APICallError.isInstance(error) && error.statusCode)).toEqual([401]);
  });
});
