import { randomUUID } from 'node:crypto';
import OpenAI, { toFile, type APIError } from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openai } from '../../lib/core/presets';
import { FAKE_TOKENS, type FakeApi } from '../fixtures/fake-apis';
import { closeAfterLeakChecks, sdkTestPolicy, startKeyward, THROTTLED_ROLE, MEMBER_ROLE, type KeywardServer } from '../fixtures/keyward-server';
import { findLeak } from '../fixtures/claims-session';

/**
 * The official `openai` SDK as its users would use it, against Keyward over real HTTP (the fast lane) with the
 * `openai` preset pointed at a local fake of the OpenAI API that checks `Authorization: Bearer <real key>`.
 * In the browser: `baseURL` is Keyward's proxy path, `apiKey` a placeholder Keyward never forwards, the CSRF
 * header in `defaultHeaders`; the browser's own fetch adds the session cookie. Cookie-less (server, mobile):
 * the sealed session token is the SDK's `apiKey`, which it sends as `Authorization: Bearer`.
 */

const PLACEHOLDER = `sk-keyward-placeholder-${randomUUID()}`;
const MODEL = 'gpt-4.1-mini';
const messages = [{ role: 'user' as const, content: 'Say where keys stay.' }];

let kw: KeywardServer;
let fake: FakeApi;
let cookie: string;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['openai'], (fakes) => [openai({ baseUrl: `${fakes.openai!.origin}/v1/`, ...sdkTestPolicy })]);
  fake = kw.fakes.openai!;
  cookie = await kw.cookie();
});

afterAll(async () => {
  // The SDK's placeholder key, the session cookie and every bearer session token never reach the API.
  await closeAfterLeakChecks(kw, [PLACEHOLDER, cookie.split('=')[1]!, ...tokens]);
});

beforeEach(() => fake.stepwise(false));

/** The browser setup the README documents (the test's fetch adds what the browser would: cookie, Origin). */
function browserClient(sessionCookie: string | null, options: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}): OpenAI {
  return new OpenAI({
    baseURL: `${kw.origin}/api/proxy/openai`,
    apiKey: PLACEHOLDER,
    defaultHeaders: { 'X-Keyward-CSRF': '1' },
    // No key is in the browser: the SDK's check guards against shipping a real one.
    dangerouslyAllowBrowser: true,
    fetch: sessionCookie === null ? fetch : kw.browserFetch(sessionCookie),
    ...options,
  });
}

/** A cookie-less client (server-side code, a mobile app): the bearer session token is the SDK's apiKey. */
async function tokenClient(options: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}): Promise<OpenAI> {
  const token = await kw.bearer();
  tokens.push(token);
  return new OpenAI({ baseURL: `${kw.origin}/api/proxy/openai`, apiKey: token, ...options });
}

/** A cookie-less client of a new user allowed one call per second (its own rate-limit counter). */
async function throttledClient(maxRetries: number): Promise<OpenAI> {
  const token = await kw.bearer({ sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] });
  tokens.push(token);
  return new OpenAI({ baseURL: `${kw.origin}/api/proxy/openai`, apiKey: token, maxRetries });
}

function lastRequest() {
  return fake.requests.at(-1)!;
}

describe('openai SDK through Keyward: streaming', () => {
  it('chat.completions streams token by token; the API sees the real key and nothing of the client', async () => {
    fake.stepwise(true);
    const stream = await browserClient(cookie).chat.completions.create({ model: MODEL, messages, stream: true });
    const seen: string[] = [];
    for await (const chunk of stream) {
      const token = chunk.choices[0]?.delta?.content;
      if (!token) continue;
      seen.push(token);
      // The fake sends token N+1 only after step(): the SDK holds token N while the fake has sent exactly N.
      expect(fake.tokensSent).toBe(seen.length);
      fake.step();
    }
    expect(seen).toEqual(FAKE_TOKENS);
    const request = lastRequest();
    expect(request.url).toBe('/v1/chat/completions');
    expect(request.headers.authorization).toBe(`Bearer ${fake.key}`);
    expect(request.headers.cookie).toBeUndefined();
    expect(request.headers['x-keyward-csrf']).toBeUndefined();
    const body = JSON.parse(request.bodyPreview.toString('utf8')) as Record<string, unknown>;
    // The preset stamps the caller's identity and caps the output tokens.
    expect(body).toMatchObject({ model: MODEL, stream: true, safety_identifier: 'local:alice', max_completion_tokens: 4096 });
  });

  it('responses.create streams token by token (the Responses API)', async () => {
    fake.stepwise(true);
    const stream = await browserClient(cookie).responses.create({ model: MODEL, input: 'Say where keys stay.', stream: true });
    const seen: string[] = [];
    let completed = false;
    for await (const event of stream) {
      if (event.type === 'response.completed') completed = true;
      if (event.type !== 'response.output_text.delta') continue;
      seen.push(event.delta);
      expect(fake.tokensSent).toBe(seen.length);
      fake.step();
    }
    expect(seen).toEqual(FAKE_TOKENS);
    expect(completed).toBe(true);
    expect(lastRequest().url).toBe('/v1/responses');
  });

  it('a cookie-less client passes its bearer session token as the apiKey: Keyward swaps it for the real key', async () => {
    const client = await tokenClient();
    const completion = await client.chat.completions.create({ model: MODEL, messages });
    expect(completion.choices[0]?.message.content).toBe(FAKE_TOKENS.join(''));
    expect(lastRequest().headers.authorization).toBe(`Bearer ${fake.key}`);
    const models = await client.models.list();
    expect(models.data.map((model) => model.id)).toEqual([MODEL]);
  });
});

describe('openai SDK through Keyward: audio uploads with array and object options', () => {
  const audio = Buffer.alloc(4096, 7);
  const talk = () => toFile(audio, 'talk.mp3', { type: 'audio/mpeg' });

  /** The multipart body the API received, read back with undici's parser: its part names in order, and the form. */
  async function received() {
    const request = lastRequest();
    const form = await new Response(new Uint8Array(request.bodyPreview), {
      headers: { 'content-type': String(request.headers['content-type']) },
    }).formData();
    const file = form.get('file') as File;
    expect(Buffer.from(await file.arrayBuffer()).equals(audio)).toBe(true);
    return { url: request.url, names: [...form.keys()], form };
  }

  it('timestamp_granularities and include go out as the SDK sends them (`name[]` parts), after the file too', async () => {
    const transcription = await browserClient(cookie).audio.transcriptions.create({
      file: await talk(),
      model: 'gpt-4o-mini-transcribe',
      response_format: 'verbose_json',
      timestamp_granularities: ['word', 'segment'],
      include: ['logprobs'],
    });
    expect(transcription.text).toBe(FAKE_TOKENS.join(''));
    const { url, names, form } = await received();
    expect(url).toBe('/v1/audio/transcriptions');
    expect(names).toEqual(['file', 'model', 'response_format', 'timestamp_granularities[]', 'timestamp_granularities[]', 'include[]']);
    expect(form.getAll('timestamp_granularities[]')).toEqual(['word', 'segment']);
    expect(form.getAll('include[]')).toEqual(['logprobs']);
  });

  it('chunking_strategy as "auto", and as a server_vad object in bracket form (before the file: read in the head)', async () => {
    const client = browserClient(cookie);
    await client.audio.transcriptions.create({ model: 'gpt-4o-mini-transcribe', chunking_strategy: 'auto', file: await talk() });
    expect((await received()).names).toEqual(['model', 'chunking_strategy', 'file']);
    expect((await received()).form.get('chunking_strategy')).toBe('auto');

    await client.audio.transcriptions.create({
      model: 'gpt-4o-mini-transcribe',
      chunking_strategy: { type: 'server_vad', prefix_padding_ms: 300, silence_duration_ms: 500, threshold: 0.6 },
      file: await talk(),
    });
    const { names, form } = await received();
    expect(names).toEqual([
      'model',
      'chunking_strategy[type]',
      'chunking_strategy[prefix_padding_ms]',
      'chunking_strategy[silence_duration_ms]',
      'chunking_strategy[threshold]',
      'file',
    ]);
    expect(Object.fromEntries([...form].filter(([name]) => name.startsWith('chunking_strategy')))).toEqual({
      'chunking_strategy[type]': 'server_vad',
      'chunking_strategy[prefix_padding_ms]': '300',
      'chunking_strategy[silence_duration_ms]': '500',
      'chunking_strategy[threshold]': '0.6',
    });
  });

  it('diarization: known_speaker_names[] and known_speaker_references[] (data URLs), response_format diarized_json; keywords[] and languages[]', async () => {
    const reference = `data:audio/wav;base64,${Buffer.alloc(2048, 3).toString('base64')}`;
    await browserClient(cookie).audio.transcriptions.create({
      file: await talk(),
      model: 'gpt-4o-mini-transcribe', // the preset's default models: gpt-4o-transcribe-diarize is left out
      response_format: 'diarized_json',
      known_speaker_names: ['agent', 'customer'],
      known_speaker_references: [reference, reference],
    });
    const { names, form } = await received();
    expect(names).toEqual(['file', 'model', 'response_format', 'known_speaker_names[]', 'known_speaker_names[]', 'known_speaker_references[]', 'known_speaker_references[]']);
    expect(form.getAll('known_speaker_names[]')).toEqual(['agent', 'customer']);
    expect(form.getAll('known_speaker_references[]')).toEqual([reference, reference]);

    await browserClient(cookie).audio.transcriptions.create({ file: await talk(), model: 'gpt-4o-mini-transcribe', keywords: ['Keyward'], languages: ['en', 'de'] });
    expect((await received()).form.getAll('languages[]')).toEqual(['en', 'de']);
  });

  it('a translation takes only what the translations API reads: a transcription-only option is refused (400), never forwarded', async () => {
    const client = browserClient(cookie);
    await client.audio.translations.create({ file: await talk(), model: 'whisper-1', prompt: 'hi', response_format: 'json', temperature: 0.2 });
    expect((await received()).url).toBe('/v1/audio/translations');
    const before = fake.requests.length;
    // The SDK's translation type has no `language` or `timestamp_granularities`: a client sends them all the same.
    for (const [extra, part] of [
      [{ language: 'de' }, 'language'],
      [{ timestamp_granularities: ['word'] }, 'timestamp_granularities[]'],
      [{ response_format: 'diarized_json' }, 'response_format'],
    ] as const) {
      const error = (await client.audio.translations
        .create({ ...extra, model: 'whisper-1', file: await talk() } as unknown as OpenAI.Audio.TranslationCreateParams)
        .catch((caught: unknown) => caught)) as APIError;
      expect(error, part).toBeInstanceOf(OpenAI.BadRequestError);
      expect(error.code).toBe('contract_violation');
      // The SDK sends `response_format` after the file: checked as it streams, the call has begun upstream and is
      // cut before that part (README "Multipart"); the others come before the file and are refused first.
      const sent = fake.requests.slice(before).map((request) => Buffer.from(request.bodyPreview).toString('latin1'));
      expect(sent.some((body) => body.includes(`name="${part}"`)), part).toBe(false);
    }
    expect(fake.requests.length - before).toBeLessThanOrEqual(1);
  });

  it('a chunking_strategy outside the API\'s schema is refused (400) and nothing reaches the API', async () => {
    const before = fake.requests.length;
    const bad = { type: 'server_vad', threshold: 2 } as const;
    const error = (await browserClient(cookie)
      .audio.transcriptions.create({ model: 'gpt-4o-mini-transcribe', chunking_strategy: bad, file: await talk() })
      .catch((caught: unknown) => caught)) as APIError;
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect(error.code).toBe('contract_violation');
    expect(error.message).toContain('body.chunking_strategy.threshold');
    expect(fake.requests.length).toBe(before);
  });
});

describe("openai SDK through Keyward: Keyward's refusals as the SDK's error classes", () => {
  async function refusal(client: OpenAI, params: OpenAI.Chat.ChatCompletionCreateParamsNonStreaming = { model: MODEL, messages }) {
    const before = fake.requests.length;
    const error = await client.chat.completions.create(params).catch((caught: unknown) => caught);
    // Refused by Keyward: nothing reached the API.
    expect(fake.requests.length).toBe(before);
    return error as APIError;
  }

  it('no session: 401 AuthenticationError', async () => {
    const error = await refusal(browserClient(null));
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(error.status).toBe(401);
    expect(error.code).toBe('unauthenticated');
  });

  it('a session without the role: 403 PermissionDeniedError', async () => {
    const error = await refusal(browserClient(await kw.cookie({ roles: ['user'] })));
    expect(error).toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect(error.code).toBe('forbidden');
  });

  it('without the CSRF header (defaultHeaders forgotten): 403 PermissionDeniedError', async () => {
    const error = await refusal(browserClient(cookie, { defaultHeaders: {} }));
    expect(error).toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect(error.code).toBe('csrf_failed');
  });

  it("a model outside the preset's allow-list: 400 BadRequestError", async () => {
    const error = await refusal(browserClient(cookie), { model: 'gpt-4.5-preview', messages });
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect(error.code).toBe('contract_violation');
  });

  it("Keyward's 429: the SDK waits for Retry-After, then the retry succeeds", async () => {
    const limited = await throttledClient(1);
    const before = fake.requests.length;
    const seenBefore = kw.responses.length;
    await limited.chat.completions.create({ model: MODEL, messages });
    // The second call within the second is refused with Retry-After: 1; with one retry allowed and the
    // SDK's own first back-off under a second, only a wait of Retry-After can make the retry succeed.
    const completion = await limited.chat.completions.create({ model: MODEL, messages });
    expect(completion.choices[0]?.message.content).toBe(FAKE_TOKENS.join(''));
    const statuses = kw.responses.slice(seenBefore).map((seen) => seen.status);
    expect(statuses).toEqual([200, 429, 200]);
    expect(kw.responses[seenBefore + 1]!.headers['retry-after']).toBe('1');
    expect(fake.requests.length).toBe(before + 2);
  });

  it('429 with no retries left: RateLimitError carrying Retry-After', async () => {
    const limited = await throttledClient(0);
    await limited.chat.completions.create({ model: MODEL, messages });
    const error = (await limited.chat.completions.create({ model: MODEL, messages }).catch((caught: unknown) => caught)) as APIError;
    expect(error).toBeInstanceOf(OpenAI.RateLimitError);
    expect(error.code).toBe('rate_limited');
    expect(error.headers?.get('retry-after')).toBe('1');
  });

  it("the API's own error passes through scrubbed: the SDK's error never holds the real key", async () => {
    fake.failNext({
      status: 401,
      body: { error: { message: `Incorrect API key provided: ${fake.key}.`, type: 'invalid_request_error', param: null, code: 'invalid_api_key' } },
    });
    const error = (await browserClient(cookie).chat.completions.create({ model: MODEL, messages }).catch((caught: unknown) => caught)) as APIError;
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(findLeak(`${error.message}\n${JSON.stringify(error.error)}`, [fake.key])).toBeNull();
  });
});

describe('openai SDK through Keyward: aborts', () => {
  it('aborting mid-stream closes the connection to the API', async () => {
    fake.stepwise(true);
    const controller = new AbortController();
    const stream = await browserClient(cookie).chat.completions.create({ model: MODEL, messages, stream: true }, { signal: controller.signal });
    const request = lastRequest();
    const seen: string[] = [];
    // The SDK's stream ends quietly when its signal aborts (no error to catch).
    for await (const chunk of stream) {
      const token = chunk.choices[0]?.delta?.content;
      if (!token) continue;
      seen.push(token);
      controller.abort();
    }
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(seen).toEqual([FAKE_TOKENS[0]]);
    expect(fake.tokensSent).toBe(1);
  });
});
