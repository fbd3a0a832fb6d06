import { Writable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { defineUpstream, type UpstreamDefinition } from '../../lib/core/config/load';
import { handleProxy, type ProxyEvent } from '../../lib/core/pipeline';
import { createLogger } from '../../lib/core/log/logger';
import { anthropic, aws, gemini, github, googleMaps, openai, stripe } from '../../lib/core/presets';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { claimsSessionCookie, findLeak } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { echoHandler, startUpstream, type RecordedRequest, type TestUpstream } from '../fixtures/upstream';

/**
 * The built-in presets through the real pipeline, against one recording node:http upstream standing in for
 * each API (the presets' `baseUrl` pointed at it): what the upstream receives (key, fixed headers, stamped
 * identity, capped bounds), what the client may not send, and budgets settled from the usage each API reports.
 * Official SDKs against the same presets are in sdks.test.ts.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const keys = { openai: randomSecret('oai'), anthropic: randomSecret('ant'), gemini: randomSecret('gem'), stripe: randomSecret('sk_test'), github: randomSecret('ghp'), maps: randomSecret('gmp'), aws: randomSecret('aws') };
const sessionSecrets = testSessionSecrets();
const secrets = [...Object.values(keys), ...Object.values(sessionSecrets)];
const logs: string[] = [];

let upstream: TestUpstream;
let runtime: Runtime;
let cookie: string;
const events = new Map<string, ProxyEvent>();

beforeAll(async () => {
  upstream = await startUpstream();
  const base = (path: string) => `${upstream.origin}${path}`;
  runtime = createRuntime({
    env: {
      ...sessionSecrets,
      OPENAI_API_KEY: keys.openai,
      ANTHROPIC_API_KEY: keys.anthropic,
      GEMINI_API_KEY: keys.gemini,
      GITHUB_TOKEN: keys.github,
      STRIPE_SECRET_KEY: keys.stripe,
      GOOGLE_MAPS_API_KEY: keys.maps,
      AWS_ACCESS_KEY_ID: 'AKIAKEYWARDTESTONLY0',
      AWS_SECRET_ACCESS_KEY: keys.aws,
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
      KEYWARD_STORE: 'memory',
    },
    upstreams: [
      openai({ baseUrl: base('/openai/v1/'), models: ['gpt-test'], maxOutputTokens: 500, budgets: [{ by: 'user', units: 1000, period: 'day' }] }),
      openai({
        id: 'openai-priced',
        baseUrl: base('/openai/v1/'),
        models: ['gpt-test', 'gpt-big'],
        maxOutputTokens: 1000,
        // Micro-dollars: $0.40 and $1.60 per million tokens; the big model $2 and $8.
        prices: { 'gpt-test': { input: 0.4, output: 1.6 }, 'gpt-big': { input: 2, output: 8 } },
        budgets: [{ by: 'user', units: 10_000, period: 'day' }],
      }),
      openai({
        id: 'openai-images',
        baseUrl: base('/openai/v1/'),
        models: ['gpt-image-test'],
        callPrice: 100,
        budgets: [{ by: 'user', units: 500, period: 'day' }],
        only: ['POST /images/generations'],
      }),
      liftedForStaff(
        openai({
          id: 'openai-lifted',
          baseUrl: base('/openai/v1/'),
          models: ['gpt-test'],
          prices: { '*': { input: 1, output: 1 } },
          budgets: [{ by: 'user', units: 1_000_000, period: 'day' }],
          only: ['POST /chat/completions'],
        }),
      ),
      anthropic({ baseUrl: base('/anthropic/'), models: ['claude-test'], maxOutputTokens: 300 }),
      anthropic({
        id: 'anthropic-priced',
        baseUrl: base('/anthropic/'),
        models: ['claude-test'],
        maxOutputTokens: 300,
        // Micro-dollars: $3 and $15 per million tokens.
        prices: { 'claude-test': { input: 3, output: 15 } },
        budgets: [{ by: 'user', units: 100_000, period: 'day' }],
      }),
      anthropic({
        id: 'anthropic-long',
        baseUrl: base('/anthropic/'),
        models: ['claude-test'],
        maxOutputTokens: 300,
        prices: { 'claude-test': { input: 3, output: 15 } },
        budgets: [{ by: 'user', units: 2_000_000, period: 'day' }],
      }),
      gemini({ baseUrl: base('/gemini/v1beta/'), models: ['gemini-test'], maxOutputTokens: 200 }),
      // Server-side tools, each allowed by name (the presets above allow none).
      openai({ id: 'openai-search', baseUrl: base('/openai/v1/'), models: ['gpt-test'], serverTools: ['web_search'] }),
      anthropic({ id: 'anthropic-search', baseUrl: base('/anthropic/'), models: ['claude-test'], serverTools: ['web_search'] }),
      gemini({ id: 'gemini-search', baseUrl: base('/gemini/v1beta/'), models: ['gemini-test'], serverTools: ['googleSearch'] }),
      aws({ baseUrl: base('/bedrock/'), models: ['nova-test'] }),
      aws({ id: 'aws-grounding', baseUrl: base('/bedrock/'), models: ['nova-test'], serverTools: ['nova_grounding'] }),
      github({ baseUrl: base('/github/'), repos: ['acme/widgets'] }),
      stripe({ baseUrl: base('/stripe/v1/') }),
      googleMaps({ baseUrl: base('/maps/api/'), perUserPerMinute: 3 }),
    ],
    logger: createLogger({
      level: 'debug',
      destination: new Writable({
        write(chunk: Buffer, _encoding, callback) {
          logs.push(chunk.toString('utf8'));
          callback();
        },
      }),
    }),
  });
  const onComplete = runtime.onComplete;
  (runtime as { onComplete?: (event: ProxyEvent) => void }).onComplete = (event) => {
    onComplete?.(event);
    events.set(event.requestId, event);
  };
  cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:ada', roles: ['user'] });
});

/** The same upstream with the role "staff" listed in every route's caps without a field: staff is not capped. */
function liftedForStaff(definition: UpstreamDefinition): UpstreamDefinition {
  const { id, config } = definition;
  return defineUpstream(id, { ...config, routes: config.routes.map((route) => ({ ...route, caps: { ...route.caps, staff: {} } })) });
}

afterAll(async () => {
  await upstream.close();
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.();
  await runtime.store.close();
});

beforeEach(() => upstream.reset());

async function call(upstreamId: string, path: string, init: { method?: string; body?: unknown; headers?: Record<string, string> } = {}) {
  const method = init.method ?? (init.body === undefined ? 'GET' : 'POST');
  const headers = new Headers({ cookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN, ...init.headers });
  if (init.body !== undefined && !headers.has('content-type')) headers.set('content-type', 'application/json');
  const url = new URL(`${APP_ORIGIN}/api/proxy/${upstreamId}${path}`);
  const body = init.body === undefined ? undefined : typeof init.body === 'string' ? init.body : JSON.stringify(init.body);
  const request = new Request(url, { method, headers, body });
  const segments = url.pathname.split('/').slice(4).map(decodeURIComponent);
  const response = await handleProxy(request, { upstream: upstreamId, path: segments }, runtime);
  const text = await response.text();
  expect(findLeak(text, secrets), 'a secret leaked into a response').toBeNull();
  return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) as Record<string, unknown> };
}

/** The body the upstream received, as JSON. */
function receivedJson(request: RecordedRequest): Record<string, unknown> {
  return JSON.parse(request.bodyPreview.toString('utf8')) as Record<string, unknown>;
}

const errorCode = (result: { json(): Record<string, unknown> }) => (result.json().error as { code: string }).code;

describe('openai preset', () => {
  const chat = { model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }] };

  it('attaches the key, caps the output, stamps the caller, and drops whatever the client claimed', async () => {
    const before = upstream.requests.length;
    const result = await call('openai', '/chat/completions', {
      body: { ...chat, safety_identifier: 'someone-else', user: 'someone-else' },
      headers: { authorization: 'Bearer sk-placeholder' },
    });
    expect(result.status).toBe(200);
    const received = upstream.requests[before]!;
    expect(received.url).toBe('/openai/v1/chat/completions');
    expect(received.headers.authorization).toBe(`Bearer ${keys.openai}`);
    expect(receivedJson(received)).toEqual({ ...chat, safety_identifier: 'local:ada', user: 'local:ada', max_completion_tokens: 500 });
  });

  it('refuses a model outside the allow-list, several completions, the old max_tokens over the cap and an unknown field, before calling', async () => {
    const before = upstream.requests.length;
    for (const body of [
      { ...chat, model: 'gpt-expensive' },
      { ...chat, max_tokens: 10_000 },
      { ...chat, n: 4 },
      { ...chat, surprise: true },
      // Tools that reach the account's stored data by id are not declarable.
      { ...chat, tools: [{ type: 'file_search', vector_store_ids: ['vs_1'] }] },
    ]) {
      const result = await call('openai', '/chat/completions', { body });
      expect(result.status, JSON.stringify(body)).toBe(400);
      expect(errorCode(result)).toBe('contract_violation');
    }
    expect(upstream.requests.length).toBe(before);
  });

  it('the Responses API: no stored objects by id, no data-reaching tools', async () => {
    const before = upstream.requests.length;
    for (const extra of [
      { previous_response_id: 'resp_someone_elses' },
      { prompt: { id: 'pmpt_1' } },
      { tools: [{ type: 'code_interpreter', container: 'cntr_1' }] },
      { tools: [{ type: 'mcp', server_url: 'https://evil.example/mcp' }] },
      // Input items that read a stored item or file by id.
      { input: [{ type: 'item_reference', id: 'msg_someone_elses' }] },
      // The type is optional in the API's own definition: an item with an id and no type is a reference too.
      { input: [{ id: 'msg_someone_elses' }] },
      { input: [{ type: null, id: 'msg_someone_elses' }] },
      // A reasoning item by id alone: the API reads the stored reasoning (with `store: true`, the default).
      { input: [{ type: 'reasoning', id: 'rs_someone_elses', summary: [] }, { role: 'user', content: 'go on' }] },
      { input: [{ type: 'reasoning', id: 'rs_someone_elses', summary: [], encrypted_content: null }] },
      { input: [{ role: 'user', content: [{ type: 'input_file', file_id: 'file-someone-elses' }] }] },
    ]) {
      const result = await call('openai', '/responses', { body: { model: 'gpt-test', input: 'hi', ...extra } });
      expect(errorCode(result), JSON.stringify(extra)).toBe('contract_violation');
    }
    const fileInChat = { ...chat, messages: [{ role: 'user', content: [{ type: 'file', file: { file_id: 'file-someone-elses' } }] }] };
    expect(errorCode(await call('openai', '/chat/completions', { body: fileInChat }))).toBe('contract_violation');
    // An earlier audio answer, referred to by id: its transcript is read from the account.
    const audioById = { ...chat, messages: [{ role: 'assistant', audio: { id: 'audio_someone_elses' } }, { role: 'user', content: 'go on' }] };
    expect(errorCode(await call('openai', '/chat/completions', { body: audioById }))).toBe('contract_violation');
    expect(upstream.requests.length).toBe(before);
    // Items sent by value, ids included (a previous answer's message, a tool call), pass.
    const byValue = await call('openai', '/responses', {
      body: {
        model: 'gpt-test',
        input: [
          { role: 'user', content: 'hi' },
          { type: 'message', role: 'assistant', id: 'msg_mine', content: [{ type: 'output_text', text: 'hello' }] },
          { type: 'function_call', id: 'fc_mine', call_id: 'call_1', name: 'f', arguments: '{}' },
          // Reasoning carried by value (`store: false`, as the Vercel AI SDK sends it), with or without its id.
          { type: 'reasoning', id: 'rs_mine', summary: [], encrypted_content: 'gAAAA-opaque' },
          { type: 'reasoning', summary: [{ type: 'summary_text', text: 'thought' }], encrypted_content: 'gAAAA-opaque' },
        ],
      },
      headers: { cookie: await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:by-value', roles: ['user'] }) },
    });
    expect(byValue.status).toBe(200);
  });

  it('a value nested deeper than the stack allows, in a field the contract leaves open: 400, not a failure', async () => {
    const cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:deep', roles: ['user'] });
    const deep = `${'['.repeat(20_000)}${']'.repeat(20_000)}`;
    const before = upstream.requests.length;
    for (const field of ['audio', 'response_format', 'tool_choice']) {
      const body = `{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"${field}":${deep}}`;
      const result = await call('openai', '/chat/completions', { body, headers: { cookie } });
      expect(result.status, field).toBe(400);
      expect(errorCode(result)).toBe('contract_violation');
    }
    expect(upstream.requests.length).toBe(before);
  });

  it('lowers an output bound over the cap to the cap (SDKs send a model\'s own maximum by default)', async () => {
    const before = upstream.requests.length;
    const other = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:clamped', roles: ['user'] });
    expect((await call('openai', '/chat/completions', { body: { ...chat, max_completion_tokens: 64_000 }, headers: { cookie: other } })).status).toBe(200);
    expect(receivedJson(upstream.requests[before]!)).toMatchObject({ max_completion_tokens: 500 });
  });

  it('streams an audio upload for transcription as a checked multipart body', async () => {
    const audio = Buffer.alloc(200_000, 7);
    const form = new FormData();
    // Text fields first, as the README recommends: they are checked before any byte is sent.
    form.append('model', 'gpt-test');
    form.append('file', new Blob([audio], { type: 'audio/mpeg' }), 'talk.mp3');
    form.append('language', 'fr');
    const before = upstream.requests.length;
    const url = `${APP_ORIGIN}/api/proxy/openai/audio/transcriptions`;
    const listener = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:listener', roles: ['user'] });
    const headers = { cookie: listener, 'x-keyward-csrf': '1', origin: APP_ORIGIN };
    const request = new Request(url, { method: 'POST', headers, body: form });
    const response = await handleProxy(request, { upstream: 'openai', path: ['audio', 'transcriptions'] }, runtime);
    await response.text();
    expect(response.status).toBe(200);
    const received = upstream.requests[before]!;
    expect(await received.bodyDone).toBeGreaterThan(audio.length);
    expect(received.headers['content-type']).toMatch(/^multipart\/form-data; boundary=/);
    const preview = received.bodyPreview.toString('latin1');
    expect(preview).toContain('name="model"');
    expect(preview).toContain('gpt-test');
    expect(preview).toContain('filename="talk.mp3"');
    const refused = new FormData();
    refused.append('model', 'gpt-expensive');
    refused.append('file', new Blob([audio]), 'talk.mp3');
    const bad = new Request(url, { method: 'POST', headers, body: refused });
    const badResponse = await handleProxy(bad, { upstream: 'openai', path: ['audio', 'transcriptions'] }, runtime);
    expect(badResponse.status).toBe(400);
    expect(((await badResponse.json()) as { error: { code: string } }).error.code).toBe('contract_violation');
  });

  it('a multipart upload refused after its head was read (budget spent) lets go of the client\'s body at once', async () => {
    const spent = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:spent', roles: ['user'] });
    for (let i = 0; i < 2; i++) expect((await call('openai', '/chat/completions', { body: chat, headers: { cookie: spent } })).status).toBe(200);
    const boundary = 'kw-test-boundary';
    const head = `--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-test\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\nContent-Type: audio/mpeg\r\n\r\n`;
    let cancelled = false;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(head));
        controller.enqueue(new Uint8Array(256 * 1024));
        // Never closed: an upload still coming in.
      },
      cancel() {
        cancelled = true;
      },
    });
    const before = upstream.requests.length;
    const request = new Request(`${APP_ORIGIN}/api/proxy/openai/audio/transcriptions`, {
      method: 'POST',
      headers: { cookie: spent, 'x-keyward-csrf': '1', origin: APP_ORIGIN, 'content-type': `multipart/form-data; boundary=${boundary}` },
      body,
      duplex: 'half',
    } as RequestInit);
    const response = await handleProxy(request, { upstream: 'openai', path: ['audio', 'transcriptions'] }, runtime);
    expect(response.status).toBe(429);
    await response.text();
    await expect.poll(() => cancelled).toBe(true);
    expect(upstream.requests.length).toBe(before);
  });

  it('serves the Responses API the Vercel AI SDK calls, and settles the budget from the stream\'s final event', async () => {
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`data: ${JSON.stringify({ type: 'response.output_text.delta', delta: 'Hel' })}\n\n`);
      res.end(`data: ${JSON.stringify({ type: 'response.completed', response: { usage: { input_tokens: 9, output_tokens: 42 } } })}\n\n`);
    });
    const streamer = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:streamer', roles: ['user'] });
    const result = await call('openai', '/responses', { body: { model: 'gpt-test', input: 'hi', stream: true }, headers: { cookie: streamer } });
    expect(result.status).toBe(200);
    expect(result.text).toContain('response.completed');
    const requestId = result.headers.get('x-request-id')!;
    await expect.poll(() => events.get(requestId)?.units).toBe(42);
    expect(receivedJson(upstream.requests.at(-1)!)).toMatchObject({ max_output_tokens: 500, safety_identifier: 'local:streamer' });
  });

  it('reserves the capped bound: a call that could overshoot the budget is refused', async () => {
    const spender = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:spender', roles: ['user'] });
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ usage: { completion_tokens: 450 } }));
    });
    const first = await call('openai', '/chat/completions', { body: chat, headers: { cookie: spender } });
    expect(first.status).toBe(200);
    await expect.poll(() => events.get(first.headers.get('x-request-id')!)?.units).toBe(450);
    // 550 left: a second call settles at 450; the third would reserve 500 of the 100 left.
    expect((await call('openai', '/chat/completions', { body: chat, headers: { cookie: spender } })).status).toBe(200);
    const third = await call('openai', '/chat/completions', { body: chat, headers: { cookie: spender } });
    expect(third.status).toBe(429);
    expect(errorCode(third)).toBe('budget_exceeded');
  });
});

describe('openai preset priced per call', () => {
  it('charges an image generation callPrice per image it asks for (n), one when n is absent', async () => {
    const painter = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:painter', roles: ['user'] });
    const images = (n?: number) =>
      call('openai-images', '/images/generations', { body: { model: 'gpt-image-test', prompt: 'a lighthouse', ...(n === undefined ? {} : { n }) }, headers: { cookie: painter } });
    const four = await images(4);
    expect(four.status).toBe(200);
    await expect.poll(() => events.get(four.headers.get('x-request-id')!)?.units).toBe(400);
    const one = await images();
    expect(one.status).toBe(200);
    await expect.poll(() => events.get(one.headers.get('x-request-id')!)?.units).toBe(100);
    // 500 of 500 spent: even one more image is refused before the upstream is called.
    const before = upstream.requests.length;
    const refused = await images(1);
    expect(refused.status).toBe(429);
    expect(errorCode(refused)).toBe('budget_exceeded');
    expect(upstream.requests.length).toBe(before);
  });
});

describe('anthropic preset with a price table: the prompt cache', () => {
  const message = { model: 'claude-test', messages: [{ role: 'user', content: 'hi' }] };
  const cache = { cache_creation_input_tokens: 1000, cache_read_input_tokens: 100 };

  it('charges 5-minute cache writes 1.25×, 1-hour ones 2×, reads 0.1×; a stream, which does not say which, 2× for every write', async () => {
    const cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:cacher', roles: ['user'] });
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      const split = { ephemeral_5m_input_tokens: 600, ephemeral_1h_input_tokens: 400 };
      res.end(JSON.stringify({ usage: { input_tokens: 10, ...cache, cache_creation: split, output_tokens: 20 } }));
    });
    const json = await call('anthropic-priced', '/v1/messages', { body: message, headers: { cookie } });
    expect(json.status).toBe(200);
    // (10 + 600 × 1.25 + 400 × 2 + 100 × 0.1) × 3 + 20 × 15
    await expect.poll(() => events.get(json.headers.get('x-request-id')!)?.units).toBe(5010);
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const start = { type: 'message_start', message: { usage: { input_tokens: 10, ...cache, output_tokens: 1 } } };
      const delta = { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { input_tokens: 10, ...cache, output_tokens: 20 } };
      res.end(`event: message_start\ndata: ${JSON.stringify(start)}\n\nevent: message_delta\ndata: ${JSON.stringify(delta)}\n\n`);
    });
    const stream = await call('anthropic-priced', '/v1/messages', { body: { ...message, stream: true }, headers: { cookie } });
    expect(stream.status).toBe(200);
    // (10 + 1000 × 2 + 100 × 0.1) × 3 + 20 × 15
    await expect.poll(() => events.get(stream.headers.get('x-request-id')!)?.units).toBe(6360);
    upstream.reset();
  });

  it('reserves every input byte at the dearest share (a 1-hour cache write: 2×), so a call cannot settle above its reservation', async () => {
    const cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:big-prompt', roles: ['user'] });
    // ~20 KB of prompt: 20,000 × 2 × 3 + 300 × 15 is over the 100,000 budget (at 1× it would fit).
    const body = { ...message, messages: [{ role: 'user', content: 'x'.repeat(20_000) }] };
    const before = upstream.requests.length;
    const refused = await call('anthropic-priced', '/v1/messages', { body, headers: { cookie } });
    expect(refused.status).toBe(429);
    expect(errorCode(refused)).toBe('budget_exceeded');
    expect(upstream.requests.length).toBe(before);
    // Half of it fits.
    const half = { ...message, messages: [{ role: 'user', content: 'x'.repeat(10_000) }] };
    expect((await call('anthropic-priced', '/v1/messages', { body: half, headers: { cookie } })).status).toBe(200);
  });
});

describe('anthropic preset with a price table: long context (more than 200K input tokens)', () => {
  const message = (content = 'hi') => ({ model: 'claude-test', messages: [{ role: 'user', content }] });
  const user = (sub: string) => sessionCookie(sessionSecrets.AUTH_SECRET, { sub, roles: ['user'] });

  it('charges every token of a call past 200K input tokens at 2× input and 1.5× output, cache included', async () => {
    const cookie = await user('local:long-reader');
    let usage: Record<string, number> = {};
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ usage }));
    });
    usage = { input_tokens: 150_000, cache_read_input_tokens: 50_000, output_tokens: 20 };
    const at = await call('anthropic-long', '/v1/messages', { body: message(), headers: { cookie } });
    // (150,000 + 50,000 × 0.1) × 3 + 20 × 15: 200K is not past the threshold.
    await expect.poll(() => events.get(at.headers.get('x-request-id')!)?.units).toBe(465_300);
    usage = { input_tokens: 150_000, cache_read_input_tokens: 60_000, output_tokens: 20 };
    const past = await call('anthropic-long', '/v1/messages', { body: message(), headers: { cookie } });
    // (150,000 + 60,000 × 0.1) × 6 + 20 × 22.5
    await expect.poll(() => events.get(past.headers.get('x-request-id')!)?.units).toBe(936_450);
    upstream.reset();
  });

  it('reserves a body of more than 200K bytes at the long-context prices', async () => {
    // 190 KB: 190,000 × 2 (1-hour cache writes) × 3 + 300 × 15 fits the 2,000,000 budget …
    const fits = await call('anthropic-long', '/v1/messages', { body: message('x'.repeat(190_000)), headers: { cookie: await user('local:long-190') } });
    expect(fits.status).toBe(200);
    // … 210 KB at 1× prices would too (1,264,500), at long-context prices (2,526,750) it does not.
    const before = upstream.requests.length;
    const refused = await call('anthropic-long', '/v1/messages', { body: message('x'.repeat(210_000)), headers: { cookie: await user('local:long-210') } });
    expect(refused.status).toBe(429);
    expect(errorCode(refused)).toBe('budget_exceeded');
    expect(upstream.requests.length).toBe(before);
  });
});

describe('openai preset with a price table', () => {
  const chat = (model: string) => ({ model, messages: [{ role: 'user', content: 'hi' }] });

  it('reserves the worst case at the model\'s prices and settles to the reported tokens\' cost', async () => {
    const payer = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:payer', roles: ['user'] });
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ usage: { prompt_tokens: 1000, completion_tokens: 500 } }));
    });
    const cheap = await call('openai-priced', '/chat/completions', { body: chat('gpt-test'), headers: { cookie: payer } });
    expect(cheap.status).toBe(200);
    // 1000 × 0.4 + 500 × 1.6
    await expect.poll(() => events.get(cheap.headers.get('x-request-id')!)?.units).toBe(1200);
    const big = await call('openai-priced', '/chat/completions', { body: chat('gpt-big'), headers: { cookie: payer } });
    // 1000 × 2 + 500 × 8
    await expect.poll(() => events.get(big.headers.get('x-request-id')!)?.units).toBe(6000);
    // 2,800 left; the big model's worst case is 1,000 output tokens × 8 = 8,000 plus its input: refused before calling.
    const before = upstream.requests.length;
    const refused = await call('openai-priced', '/chat/completions', { body: chat('gpt-big'), headers: { cookie: payer } });
    expect(refused.status).toBe(429);
    expect(errorCode(refused)).toBe('budget_exceeded');
    expect(upstream.requests.length).toBe(before);
    // The cheap model still fits: 1,000 × 1.6 plus its input bound.
    expect((await call('openai-priced', '/chat/completions', { body: chat('gpt-test'), headers: { cookie: payer } })).status).toBe(200);
  });

  it('a priced chat stream must report its usage; an embedding is charged its reported input', async () => {
    const streamer = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:pricedstream', roles: ['user'] });
    const unreported = await call('openai-priced', '/chat/completions', { body: { ...chat('gpt-test'), stream: true }, headers: { cookie: streamer } });
    expect(errorCode(unreported)).toBe('contract_violation');
    expect(unreported.text).toContain('stream_options.include_usage');
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ data: [], usage: { prompt_tokens: 250, total_tokens: 250 } }));
    });
    const embedded = await call('openai-priced', '/embeddings', { body: { model: 'gpt-test', input: 'hello' }, headers: { cookie: streamer } });
    expect(embedded.status).toBe(200);
    await expect.poll(() => events.get(embedded.headers.get('x-request-id')!)?.units).toBe(100); // 250 × 0.4
  });

  it('a caller whose role lifts the output cap cannot use a priced route without a bound: no worst case to reserve', async () => {
    const staff = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:staff', roles: ['staff'] });
    const before = upstream.requests.length;
    const unbounded = await call('openai-lifted', '/chat/completions', { body: chat('gpt-test'), headers: { cookie: staff } });
    expect(errorCode(unbounded)).toBe('contract_violation');
    expect(unbounded.text).toContain('body.max_completion_tokens: required on a priced route');
    expect(upstream.requests.length).toBe(before);
    const bounded = await call('openai-lifted', '/chat/completions', { body: { ...chat('gpt-test'), max_completion_tokens: 9000 }, headers: { cookie: staff } });
    expect(bounded.status).toBe(200);
  });

  it('a price table must price every allowed model, or "*"', () => {
    expect(() => openai({ models: ['a', 'b'], prices: { a: { input: 1, output: 1 } } })).toThrow('upstreams.openai.prices: no price for "b"');
    expect(() => openai({ models: ['a', 'b'], prices: { '*': { input: 1, output: 1 } } })).not.toThrow();
  });
});

describe('anthropic preset', () => {
  const message = { model: 'claude-test', messages: [{ role: 'user', content: 'hi' }] };

  it('sends x-api-key, passes the SDK\'s anthropic-version and anthropic-beta on, stamps metadata.user_id', async () => {
    const before = upstream.requests.length;
    const result = await call('anthropic', '/v1/messages', {
      body: { ...message, metadata: { user_id: 'forged' } },
      headers: { 'anthropic-version': '2026-10-21', 'anthropic-beta': 'tools-2024-04-04', 'x-api-key': 'sk-ant-placeholder' },
    });
    expect(result.status).toBe(200);
    const received = upstream.requests[before]!;
    expect(received.url).toBe('/anthropic/v1/messages');
    expect(received.headers['x-api-key']).toBe(keys.anthropic);
    expect(received.headers['anthropic-version']).toBe('2026-10-21');
    expect(received.headers['anthropic-beta']).toBe('tools-2024-04-04');
    expect(receivedJson(received)).toMatchObject({ max_tokens: 300, metadata: { user_id: 'local:ada' } });
    expect(received.rawHeaders.filter((h) => h.toLowerCase() === 'x-api-key')).toHaveLength(1);
  });

  it('names a version for a client that sends none (plain fetch, the typed client)', async () => {
    const before = upstream.requests.length;
    expect((await call('anthropic', '/v1/messages', { body: message })).status).toBe(200);
    expect(upstream.requests[before]!.headers['anthropic-version']).toBe('2023-06-01');
  });

  it('refuses what reads the account\'s stored files or containers by id (another user\'s, with one shared key)', async () => {
    const before = upstream.requests.length;
    const headers = { cookie: await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:anthropic-stored', roles: ['user'] }) };
    const fileBlock = { type: 'document', source: { type: 'file', file_id: 'file_someone_elses' } };
    for (const body of [
      { ...message, messages: [{ role: 'user', content: [fileBlock, { type: 'text', text: 'summarise' }] }] },
      { ...message, system: [{ type: 'text', text: 'be brief' }, fileBlock] },
      { ...message, messages: [{ role: 'user', content: [{ type: 'container_upload', file_id: 'file_someone_elses' }] }] },
      { ...message, container: 'container_someone_elses' },
    ]) {
      expect(errorCode(await call('anthropic', '/v1/messages', { body, headers })), JSON.stringify(body)).toBe('contract_violation');
    }
    expect(errorCode(await call('anthropic', '/v1/messages/count_tokens', { body: { ...message, messages: [{ role: 'user', content: [fileBlock] }] }, headers }))).toBe(
      'contract_violation',
    );
    expect(upstream.requests.length).toBe(before);
    // Inline (base64) documents pass.
    const inline = { type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: 'JVBERi0=' } };
    expect((await call('anthropic', '/v1/messages', { body: { ...message, messages: [{ role: 'user', content: [inline] }] }, headers })).status).toBe(200);
  });
});

describe('gemini preset', () => {
  const body = { contents: [{ role: 'user', parts: [{ text: 'hi' }] }], generationConfig: { temperature: 0.2, topK: 3 } };

  it('sends the action after the model with a literal ":", the key in x-goog-api-key, and caps the output', async () => {
    const before = upstream.requests.length;
    const result = await call('gemini', '/models/gemini-test:streamGenerateContent?alt=sse', { body });
    expect(result.status).toBe(200);
    const received = upstream.requests[before]!;
    expect(received.url).toBe('/gemini/v1beta/models/gemini-test:streamGenerateContent?alt=sse');
    expect(received.headers['x-goog-api-key']).toBe(keys.gemini);
    // Generation options the preset does not bound pass through as sent.
    expect(receivedJson(received)).toEqual({ ...body, generationConfig: { temperature: 0.2, topK: 3, maxOutputTokens: 200 } });
  });

  it('refuses a client\'s own ?key= (Google also reads a key from the query), on every route', async () => {
    const before = upstream.requests.length;
    for (const path of ['/models/gemini-test:generateContent?key=mine', '/models/gemini-test:streamGenerateContent?alt=sse&key=mine']) {
      expect(errorCode(await call('gemini', path, { body }))).toBe('contract_violation');
    }
    expect(errorCode(await call('gemini', '/models?key=mine'))).toBe('contract_violation');
    expect(errorCode(await call('gemini', '/models/gemini-test?KEY=mine'))).toBe('contract_violation');
    expect(upstream.requests.length).toBe(before);
    expect((await call('gemini', '/models?pageSize=5')).status).toBe(200);
  });

  it('knows only the allowed models, refuses several candidates, and lowers a larger output bound to the cap', async () => {
    const before = upstream.requests.length;
    expect(errorCode(await call('gemini', '/models/gemini-ultra:generateContent', { body }))).toBe('route_not_found');
    expect(errorCode(await call('gemini', '/models/gemini-test:generateContent', { body: { ...body, generationConfig: { candidateCount: 2 } } }))).toBe(
      'contract_violation',
    );
    expect(upstream.requests.length).toBe(before);
    expect((await call('gemini', '/models/gemini-test:generateContent', { body: { ...body, generationConfig: { maxOutputTokens: 9999 } } })).status).toBe(200);
    expect(receivedJson(upstream.requests.at(-1)!)).toMatchObject({ generationConfig: { maxOutputTokens: 200 } });
  });

  it('refuses the bounds under their proto names too (Google reads candidate_count as candidateCount)', async () => {
    const before = upstream.requests.length;
    const cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:proto-names', roles: ['user'] });
    for (const generationConfig of [{ candidate_count: 8 }, { max_output_tokens: 65_536 }, { temperature: 0.2, top_k: 3 }]) {
      const result = await call('gemini', '/models/gemini-test:generateContent', { body: { ...body, generationConfig }, headers: { cookie } });
      expect(errorCode(result), JSON.stringify(generationConfig)).toBe('contract_violation');
    }
    expect(upstream.requests.length).toBe(before);
  });

  it('refuses what reads the project\'s stored caches, uploaded files and file search stores by name', async () => {
    const before = upstream.requests.length;
    const headers = { cookie: await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:gemini-stored', roles: ['user'] }) };
    const withPart = (part: unknown) => ({ ...body, contents: [{ role: 'user', parts: [{ text: 'summarise' }, part] }] });
    for (const sent of [
      { ...body, cachedContent: 'cachedContents/someone-elses' },
      withPart({ fileData: { mimeType: 'application/pdf', fileUri: 'https://generativelanguage.googleapis.com/v1beta/files/someone-elses' } }),
      withPart({ file_data: { mime_type: 'application/pdf', file_uri: 'files/someone-elses' } }),
      withPart({ fileData: { fileUri: 'gs://bucket/someone-elses.pdf' } }),
      { ...body, tools: [{ fileSearch: { fileSearchStoreNames: ['fileSearchStores/someone-elses'] } }] },
      { ...body, systemInstruction: { parts: [{ fileData: { fileUri: 'files/someone-elses' } }] } },
      // Both spellings in one object, a web page's first: each is looked at (which one Google keeps is its own affair).
      withPart({ fileData: { fileUri: 'https://example.com/a.pdf', file_uri: 'https://generativelanguage.googleapis.com/v1beta/files/someone-elses' } }),
      // A fully qualified host name is the same host.
      withPart({ fileData: { fileUri: 'https://generativelanguage.googleapis.com./v1beta/files/someone-elses' } }),
    ]) {
      expect(errorCode(await call('gemini', '/models/gemini-test:generateContent', { body: sent, headers })), JSON.stringify(sent)).toBe('contract_violation');
    }
    const counted = { generateContentRequest: { model: 'models/gemini-test', contents: body.contents, cachedContent: 'cachedContents/someone-elses' } };
    expect(errorCode(await call('gemini', '/models/gemini-test:countTokens', { body: counted, headers }))).toBe('contract_violation');
    expect(upstream.requests.length).toBe(before);
    // A web page's https URL (a YouTube video) is not stored on the project: it passes.
    const video = withPart({ fileData: { mimeType: 'video/mp4', fileUri: 'https://www.youtube.com/watch?v=9hE5-98ZeCg' } });
    expect((await call('gemini', '/models/gemini-test:generateContent', { body: video, headers })).status).toBe(200);
  });
});

describe('server-side tools: refused unless the preset\'s serverTools names them (budgets do not count their per-use fees)', () => {
  /** Each body refused with 400 contract_violation, the API never called. */
  async function refused(upstreamId: string, path: string, bodies: unknown[], headers: Record<string, string>) {
    const before = upstream.requests.length;
    for (const body of bodies) {
      const result = await call(upstreamId, path, { body, headers });
      expect(result.status, `${upstreamId}: ${JSON.stringify(body)}`).toBe(400);
      expect(errorCode(result)).toBe('contract_violation');
    }
    expect(upstream.requests.length).toBe(before);
  }
  /** Each body forwarded as sent (the tools intact). */
  async function passes(upstreamId: string, path: string, bodies: Record<string, unknown>[], headers: Record<string, string>) {
    for (const body of bodies) {
      const before = upstream.requests.length;
      expect((await call(upstreamId, path, { body, headers })).status, `${upstreamId}: ${JSON.stringify(body)}`).toBe(200);
      expect(upstream.requests.length).toBe(before + 1);
      expect(receivedJson(upstream.requests.at(-1)!)).toMatchObject('tools' in body ? { tools: body.tools } : { toolConfig: body.toolConfig });
    }
  }
  const session = async (name: string) => ({ cookie: await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: `local:${name}`, roles: ['user'] }) });

  it('openai: web search (Responses tools, chat\'s web_search_options) only when named; function and custom tools pass', async () => {
    const headers = await session('openai-tools');
    const responses = (tools: unknown[]) => ({ model: 'gpt-test', input: 'hi', tools });
    const chat = { model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }] };
    const searching = [responses([{ type: 'web_search' }]), responses([{ type: 'function', name: 'f', parameters: {} }, { type: 'web_search_preview' }])];
    await refused('openai', '/responses', searching, headers);
    await refused('openai', '/chat/completions', [{ ...chat, web_search_options: {} }], headers);
    const client = [responses([{ type: 'function', name: 'f', parameters: {} }, { type: 'custom', name: 'g' }])];
    await passes('openai', '/responses', client, headers);
    // Allowed by name: that one passes, the other stays refused.
    await passes('openai-search', '/responses', [responses([{ type: 'web_search' }])], headers);
    expect((await call('openai-search', '/chat/completions', { body: { ...chat, web_search_options: {} }, headers })).status).toBe(200);
    await refused('openai-search', '/responses', [responses([{ type: 'web_search_preview' }])], headers);
  });

  it('anthropic: web search, web fetch, code execution and tool search only when named; tools without a type, custom and client-run ones pass', async () => {
    const headers = await session('anthropic-tools');
    const message = (tools: unknown[]) => ({ model: 'claude-test', messages: [{ role: 'user', content: 'hi' }], tools });
    const server = [
      { type: 'web_search_20250305', name: 'web_search', max_uses: 5 },
      { type: 'web_fetch_20250910', name: 'web_fetch' },
      { type: 'code_execution_20250825', name: 'code_execution' },
      { type: 'tool_search_tool_regex_20251119', name: 'tool_search_tool_regex' },
      { type: 'mcp_toolset', mcp_server_name: 'someone' },
      { type: 'not_yet_known_20990101', name: 'x' },
    ];
    await refused('anthropic', '/v1/messages', server.map((tool) => message([tool])), headers);
    await refused('anthropic', '/v1/messages/count_tokens', [message([server[0]])], headers);
    const weather = { name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: {} } };
    const client = [message([weather, { ...weather, name: 'custom_one', type: 'custom' }, { type: 'bash_20250124', name: 'bash' }, { type: 'text_editor_20250728', name: 'str_replace_based_edit_tool' }])];
    await passes('anthropic', '/v1/messages', client, headers);
    await passes('anthropic-search', '/v1/messages', [message([weather, server[0]]), message([{ type: 'web_search_20260209', name: 'web_search' }])], headers);
    await passes('anthropic-search', '/v1/messages/count_tokens', [message([server[0]])], headers);
    await refused('anthropic-search', '/v1/messages', [message([server[1]]), message([{ type: 'web_search_preview', name: 'web_search' }])], headers);
  });

  it('gemini: Google Search and Maps grounding, code execution and URL context only when named, in either spelling; function declarations pass', async () => {
    const headers = await session('gemini-tools');
    const generate = (tools: unknown[]) => ({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }], tools });
    const functions = { functionDeclarations: [{ name: 'f', parameters: { type: 'object' } }] };
    const server = [
      { googleSearch: {} },
      { google_search: {} },
      { googleSearchRetrieval: { dynamicRetrievalConfig: { mode: 'MODE_DYNAMIC' } } },
      { googleMaps: {} },
      { codeExecution: {} },
      { urlContext: {} },
      { ...functions, googleSearch: {} },
      { computerUse: { environment: 'ENVIRONMENT_BROWSER' } },
      'googleSearch',
    ];
    await refused('gemini', '/models/gemini-test:generateContent', server.map((tool) => generate([tool])), headers);
    await passes('gemini', '/models/gemini-test:generateContent', [generate([functions]), generate([{ function_declarations: [{ name: 'g' }] }])], headers);
    await passes('gemini-search', '/models/gemini-test:generateContent', [generate([functions, { googleSearch: {} }]), generate([{ google_search: {} }])], headers);
    await refused('gemini-search', '/models/gemini-test:streamGenerateContent?alt=sse', [generate([{ codeExecution: {} }])], headers);
  });

  it('bedrock: system tools (Nova web grounding, code interpreter) only when named; tool specs and cache points pass', async () => {
    const headers = await session('bedrock-tools');
    const converse = (tools: unknown[]) => ({ messages: [{ role: 'user', content: [{ text: 'hi' }] }], toolConfig: { tools } });
    const spec = { toolSpec: { name: 'f', inputSchema: { json: { type: 'object' } } } };
    const server = [{ systemTool: { name: 'nova_grounding' } }, { systemTool: { name: 'nova_code_interpreter' } }, { systemTool: {} }, { somethingNew: {} }];
    await refused('aws', '/model/nova-test/converse', server.map((tool) => converse([tool])), headers);
    await refused('aws', '/model/nova-test/converse-stream', [converse([server[0]])], headers);
    await passes('aws', '/model/nova-test/converse', [converse([spec, { cachePoint: { type: 'default' } }])], headers);
    await passes('aws-grounding', '/model/nova-test/converse', [converse([spec, server[0]])], headers);
    await refused('aws-grounding', '/model/nova-test/converse', [converse([server[1]])], headers);
  });
});

describe('github preset', () => {
  it('reaches the pinned repository only, read-only by default', async () => {
    upstream.handle(echoHandler);
    const ok = await call('github', '/repos/acme/widgets/issues?state=open&per_page=5');
    expect(ok.status).toBe(200);
    expect(upstream.requests.at(-1)!.headers.authorization).toBe(`Bearer ${keys.github}`);
    const forwarded = new URL(upstream.requests.at(-1)!.url, 'http://x');
    expect(forwarded.pathname).toBe('/github/repos/acme/widgets/issues');
    expect([...forwarded.searchParams].sort()).toEqual([['per_page', '5'], ['state', 'open']]);
    const before = upstream.requests.length;
    expect(errorCode(await call('github', '/repos/acme/secrets/issues'))).toBe('route_not_found');
    expect(errorCode(await call('github', '/repos/acme/widgets/issues', { body: { title: 'x' } }))).toBe('method_not_allowed');
    expect(errorCode(await call('github', '/repos/acme/widgets/issues?filter=all'))).toBe('contract_violation');
    expect(upstream.requests.length).toBe(before);
  });

  it("an issue or pull request by its number is forwarded; the repository-wide lists those routes would take are not", async () => {
    upstream.handle(echoHandler);
    for (const path of ['/repos/acme/widgets/issues/12', '/repos/acme/widgets/issues/12/comments', '/repos/acme/widgets/pulls/7']) {
      expect((await call('github', path)).status, path).toBe(200);
      expect(new URL(upstream.requests.at(-1)!.url, 'http://x').pathname).toBe(`/github${path}`);
    }
    const before = upstream.requests.length;
    for (const path of ['/repos/acme/widgets/issues/comments', '/repos/acme/widgets/issues/events', '/repos/acme/widgets/pulls/comments']) {
      const answer = await call('github', path);
      expect(answer.status, path).toBe(404);
      expect(errorCode(answer)).toBe('route_not_found');
    }
    expect(upstream.requests.length).toBe(before);
  });
});

describe('stripe preset', () => {
  const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
  let customer: string;
  beforeAll(async () => {
    customer = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:buyer', roles: ['user'], claims: { stripeCustomerId: 'cus_Mine123' } });
  });

  it('re-encodes a Checkout Session form for the caller\'s own customer, whatever customer the client named', async () => {
    const before = upstream.requests.length;
    const form = 'mode=payment&line_items[0][price]=price_1Abc&line_items[0][quantity]=2&success_url=https%3A%2F%2Fshop.example%2Fdone&customer=cus_Victim&metadata[order]=42';
    const result = await call('stripe', '/checkout/sessions', { body: form, headers: { ...FORM, cookie: customer, 'idempotency-key': 'order-42', 'stripe-version': '2025-01-27.acacia' } });
    expect(result.status).toBe(200);
    const received = upstream.requests[before]!;
    expect(received.headers.authorization).toBe(`Bearer ${keys.stripe}`);
    expect(received.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(received.headers['idempotency-key']).toBe('order-42');
    expect(received.headers['stripe-version']).toBe('2025-01-27.acacia');
    const sent = new URLSearchParams(received.bodyPreview.toString('utf8'));
    expect(sent.get('customer')).toBe('cus_Mine123');
    expect(sent.get('line_items[0][price]')).toBe('price_1Abc');
    expect(sent.get('line_items[0][quantity]')).toBe('2');
    expect(sent.get('metadata[order]')).toBe('42');
    expect(sent.get('success_url')).toBe('https://shop.example/done');
    expect(sent.get('client_reference_id')).toBe('local:buyer');
  });

  it('refuses amounts, unknown fields and JSON; lists and reads only the caller\'s own customer', async () => {
    const before = upstream.requests.length;
    for (const form of ['mode=payment&amount=1', 'mode=payment&line_items[0][price]=price_1&line_items[0][amount]=1', 'mode=donate']) {
      const result = await call('stripe', '/checkout/sessions', { body: form, headers: { ...FORM, cookie: customer } });
      expect(errorCode(result), form).toBe('contract_violation');
    }
    expect((await call('stripe', '/checkout/sessions', { body: { mode: 'payment' }, headers: { cookie: customer } })).status).toBe(415);
    expect(errorCode(await call('stripe', '/customers/cus_Victim', { headers: { cookie: customer } }))).toBe('not_owner');
    expect(upstream.requests.length).toBe(before);
    expect((await call('stripe', '/customers/cus_Mine123', { headers: { cookie: customer } })).status).toBe(200);
    expect((await call('stripe', '/payment_intents?limit=3&customer=cus_Victim', { headers: { cookie: customer } })).status).toBe(200);
    const listed = new URL(upstream.requests.at(-1)!.url, 'http://x');
    expect(listed.searchParams.getAll('customer')).toEqual(['cus_Mine123']);
    // A session without the claim cannot reach customer-scoped routes at all; nor one whose claim is empty (Stripe
    // reads `customer=` as no filter: the whole account's list).
    expect(errorCode(await call('stripe', '/payment_intents'))).toBe('forbidden');
    const empty = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:no-customer', roles: ['user'], claims: { stripeCustomerId: '' } });
    expect(errorCode(await call('stripe', '/payment_intents', { headers: { cookie: empty } }))).toBe('forbidden');
    expect(upstream.requests.at(-1)!.url).toBe(listed.pathname + listed.search);
  });
});

describe('stripe preset: the query', () => {
  it('a POST takes no query parameters: Stripe merges them into the body, past the form contract', async () => {
    const buyer = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:tamper', roles: ['user'], claims: { stripeCustomerId: 'cus_T1' } });
    const before = upstream.requests.length;
    const tampered = '/checkout/sessions?line_items[0][price_data][unit_amount]=1&line_items[0][price_data][currency]=usd&line_items[0][quantity]=1';
    const result = await call('stripe', tampered, { body: 'mode=payment', headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: buyer } });
    expect(errorCode(result)).toBe('contract_violation');
    expect(upstream.requests.length).toBe(before);
  });
});

describe('google-maps preset', () => {
  it('adds the key as a query parameter, refuses a client\'s own `key`, and rate-limits each user', async () => {
    const walker = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:walker', roles: ['user'] });
    const geocode = (query: string) => call('google-maps', `/geocode/json?${query}`, { headers: { cookie: walker } });
    const ok = await geocode('address=Paris');
    expect(ok.status).toBe(200);
    const url = new URL(upstream.requests.at(-1)!.url, 'http://x');
    expect(url.pathname).toBe('/maps/api/geocode/json');
    expect(url.searchParams.get('address')).toBe('Paris');
    expect(url.searchParams.getAll('key')).toEqual([keys.maps]);
    // Refused by the query contract before the rate limit counts it.
    expect((await geocode('address=Paris&key=mine')).status).toBe(400);
    expect((await geocode('address=Lyon')).status).toBe(200);
    expect((await geocode('address=Nice')).status).toBe(200);
    const limited = await geocode('address=Metz');
    expect(limited.status).toBe(429);
    expect(errorCode(limited)).toBe('rate_limited');
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
  });
});

describe('logs', () => {
  it('carry no key, whatever the upstream echoed', () => {
    expect(findLeak(logs.join(''), secrets)).toBeNull();
  });
});
