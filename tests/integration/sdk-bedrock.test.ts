import { randomUUID } from 'node:crypto';
import {
  AccessDeniedException,
  BedrockRuntimeClient,
  BedrockRuntimeServiceException,
  ConverseCommand,
  ConverseStreamCommand,
  type BedrockRuntimeClientConfig,
  type ConverseCommandInput,
} from '@aws-sdk/client-bedrock-runtime';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { aws } from '../../lib/core/presets';
import { findLeak } from '../fixtures/claims-session';
import { FAKE_TOKENS, type FakeApi } from '../fixtures/fake-apis';
import {
  closeAfterLeakChecks,
  MEMBER_ROLE,
  sdkTestPolicy,
  startKeyward,
  THROTTLED_ROLE,
  type KeywardServer,
  type SdkIdentity,
} from '../fixtures/keyward-server';

/**
 * The official `@aws-sdk/client-bedrock-runtime` against Keyward over real HTTP, with the `aws` preset (Bedrock
 * runtime: Converse and ConverseStream) pointed at a local fake that verifies every request's SigV4 signature
 * with `aws4` against the one real key pair, and answers ConverseStream in AWS's binary event-stream framing.
 *
 * The client's `endpoint` is Keyward's proxy path. In the browser it signs with placeholder credentials (it
 * insists on some); Keyward drops its Authorization and X-Amz-* headers, reads the session from the cookie and
 * signs anew with the real key pair; a middleware adds the CSRF header (the client has no `headers` option).
 * Cookie-less, the client's own bearer-token scheme (Bedrock API keys: `token` with `authSchemePreference:
 * ['httpBearerAuth']`) sends the session token as `Authorization: Bearer`, which is how Keyward reads one.
 * In Node the client defaults to an HTTP/2 handler; Keyward's fast lane speaks HTTP/1.1, so it gets
 * `NodeHttpHandler` (the browser build uses fetch).
 *
 * Two upstreams: `aws` with the preset's default models (literal routes such as
 * `/model/amazon.nova-lite-v1:0/converse`), `bedrock-any` with `models: "*"` (`/model/{model:colon}/…`). The SDK
 * sends the model id's ":" as %3A either way.
 */

const PLACEHOLDER = { accessKeyId: 'AKIAKEYWARDPLACEHOLD', secretAccessKey: `keyward-placeholder-${randomUUID()}` };
const MODEL = 'amazon.nova-lite-v1:0';
const input: ConverseCommandInput = {
  modelId: MODEL,
  messages: [{ role: 'user', content: [{ text: 'Say where keys stay.' }] }],
};

let kw: KeywardServer;
let fake: FakeApi;
let cookie: string;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['bedrock'], (fakes) => [
    aws({ baseUrl: `${fakes.bedrock!.origin}/`, ...sdkTestPolicy }),
    aws({ id: 'bedrock-any', baseUrl: `${fakes.bedrock!.origin}/`, models: '*', ...sdkTestPolicy }),
  ]);
  fake = kw.fakes.bedrock!;
  cookie = await kw.cookie();
});

afterAll(async () => {
  // The SDK's placeholder credentials (its Authorization names the key id), the session cookie and every bearer
  // token never reach the API.
  await closeAfterLeakChecks(kw, [PLACEHOLDER.accessKeyId, PLACEHOLDER.secretAccessKey, cookie.split('=')[1]!, ...tokens]);
});

beforeEach(() => fake.stepwise(false));

/** Adds headers to every request the client sends (the README's middleware for the CSRF header). */
function addingHeaders(client: BedrockRuntimeClient, name: string, headers: () => Record<string, string>): void {
  client.middlewareStack.add(
    (next) => (args) => {
      Object.assign((args.request as { headers: Record<string, string> }).headers, headers());
      return next(args);
    },
    { step: 'build', name },
  );
}

/**
 * The browser setup the README documents: placeholder credentials and the CSRF header. Here in Node, a second
 * middleware adds what the browser itself would: the cookie, Origin and Fetch Metadata.
 */
function browserClient(
  sessionCookie: string | null,
  options: { upstream?: string; csrf?: boolean; config?: BedrockRuntimeClientConfig } = {},
) {
  const client = new BedrockRuntimeClient({
    endpoint: `${kw.origin}/api/proxy/${options.upstream ?? 'aws'}`,
    region: 'us-east-1',
    credentials: PLACEHOLDER,
    requestHandler: new NodeHttpHandler(),
    ...options.config,
  });
  if (options.csrf ?? true) addingHeaders(client, 'keywardCsrf', () => ({ 'x-keyward-csrf': '1' }));
  if (sessionCookie !== null) {
    addingHeaders(client, 'browser', () => ({
      cookie: sessionCookie,
      origin: kw.origin,
      'sec-fetch-site': 'same-origin',
      'sec-fetch-mode': 'cors',
    }));
  }
  return client;
}

/** Cookie-less: the session token through the client's own bearer-token scheme. */
async function tokenClient(
  identity: SdkIdentity = {},
  config: BedrockRuntimeClientConfig = {},
): Promise<BedrockRuntimeClient> {
  const token = await kw.bearer(identity);
  tokens.push(token);
  return new BedrockRuntimeClient({
    endpoint: `${kw.origin}/api/proxy/aws`,
    region: 'us-east-1',
    token: { token },
    authSchemePreference: ['httpBearerAuth'],
    requestHandler: new NodeHttpHandler(),
    ...config,
  });
}

function lastRequest() {
  return fake.requests.at(-1)!;
}

function requestBody(): Record<string, unknown> {
  return JSON.parse(lastRequest().bodyPreview.toString('utf8')) as Record<string, unknown>;
}

/** The SDK copies the members of an unmodelled error body onto its exception: Keyward's `error` among them. */
function keywardCode(error: BedrockRuntimeServiceException): string {
  return (error as unknown as { error: { code: string } }).error.code;
}

describe('@aws-sdk/client-bedrock-runtime through Keyward', () => {
  it('ConverseStream streams token by token; the API gets a SigV4 signature by the real key pair, nothing of the client', async () => {
    fake.stepwise(true);
    const response = await browserClient(cookie).send(new ConverseStreamCommand(input));
    const seen: string[] = [];
    let stopReason: string | undefined;
    for await (const event of response.stream!) {
      if (event.messageStop) stopReason = event.messageStop.stopReason;
      const text = event.contentBlockDelta?.delta?.text;
      if (text === undefined) continue;
      // The fake sends token N+1 only after step(): the SDK holds token N while the fake has sent exactly N.
      // (Keyward releases what its scrubber holds back at each message's end: lib/core/respond/event-stream.ts.)
      expect(fake.tokensSent).toBe(seen.length + 1);
      seen.push(text);
      fake.step();
    }
    expect(seen).toEqual(FAKE_TOKENS);
    expect(stopReason).toBe('end_turn');
    const request = lastRequest();
    // The literal route sends the model id's ":" as the preset writes it (the SDK sent %3A).
    expect(request.url).toBe(`/model/${MODEL}/converse-stream`);
    expect(request.headers.authorization).toMatch(
      new RegExp(`^AWS4-HMAC-SHA256 Credential=${fake.keyId}/\\d{8}/us-east-1/bedrock/aws4_request, `),
    );
    expect(request.headers.cookie).toBeUndefined();
    expect(request.headers['x-keyward-csrf']).toBeUndefined();
    expect(request.headers['amz-sdk-invocation-id']).toBeUndefined();
    // The preset fills in the output cap and stamps the caller.
    expect(requestBody()).toMatchObject({
      inferenceConfig: { maxTokens: 4096 },
      requestMetadata: { keyward_user: 'local:alice' },
    });
  });

  it('Converse: the whole answer, usage and the request id', async () => {
    const output = await browserClient(cookie).send(
      new ConverseCommand({ ...input, inferenceConfig: { maxTokens: 100_000, temperature: 0.2 } }),
    );
    expect(output.output?.message?.content).toEqual([{ text: FAKE_TOKENS.join('') }]);
    expect(output.usage?.outputTokens).toBe(FAKE_TOKENS.length);
    expect(output.$metadata.requestId).toBe('fake-request-2');
    expect(lastRequest().url).toBe(`/model/${MODEL}/converse`);
    // Over the cap: lowered to it.
    expect(requestBody()).toMatchObject({ inferenceConfig: { maxTokens: 4096, temperature: 0.2 } });
  });

  it('models: "*" takes any model id: its ":" arrives as the SDK sent it, %3A, and is signed so', async () => {
    const modelId = 'anthropic.claude-3-5-sonnet-20240620-v1:0';
    const output = await browserClient(cookie, { upstream: 'bedrock-any' }).send(
      new ConverseCommand({ ...input, modelId }),
    );
    expect(output.output?.message?.content).toEqual([{ text: FAKE_TOKENS.join('') }]);
    expect(lastRequest().url).toBe('/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse');
  });

  it('a cookie-less client sends its session token through the bearer-token scheme; Keyward signs with the real key', async () => {
    const client = await tokenClient();
    const output = await client.send(new ConverseCommand(input));
    expect(output.output?.message?.content).toEqual([{ text: FAKE_TOKENS.join('') }]);
    expect(lastRequest().headers.authorization).toMatch(new RegExp(`^AWS4-HMAC-SHA256 Credential=${fake.keyId}/`));
  });

  it("the client's default HTTP/2 handler cannot talk to the fast lane (HTTP/1.1): NodeHttpHandler is needed", async () => {
    const before = fake.requests.length;
    const client = new BedrockRuntimeClient({
      endpoint: `${kw.origin}/api/proxy/aws`,
      region: 'us-east-1',
      credentials: PLACEHOLDER,
      maxAttempts: 1,
    });
    await expect(client.send(new ConverseCommand(input))).rejects.toThrow();
    client.destroy();
    expect(fake.requests.length).toBe(before);
  });
});

describe("@aws-sdk/client-bedrock-runtime: Keyward's refusals as the SDK's exceptions", () => {
  async function refusal(
    client: BedrockRuntimeClient,
    command: ConverseCommandInput = input,
  ): Promise<BedrockRuntimeServiceException> {
    const before = fake.requests.length;
    const error = await client.send(new ConverseCommand(command)).catch((caught: unknown) => caught);
    // Refused by Keyward: nothing reached the API.
    expect(fake.requests.length).toBe(before);
    // Keyward's errors name no AWS error type: the service's base exception, with the status.
    expect(error).toBeInstanceOf(BedrockRuntimeServiceException);
    expect((error as BedrockRuntimeServiceException).$fault).toBe('client');
    return error as BedrockRuntimeServiceException;
  }

  it('no session (a signature by placeholder credentials is no session): 401', async () => {
    const error = await refusal(browserClient(null, { config: { maxAttempts: 1 } }));
    expect(error.$metadata.httpStatusCode).toBe(401);
    expect(keywardCode(error)).toBe('unauthenticated');
  });

  it('a session without the role: 403 forbidden', async () => {
    const error = await refusal(browserClient(await kw.cookie({ roles: ['user'] })));
    expect(error.$metadata.httpStatusCode).toBe(403);
    expect(keywardCode(error)).toBe('forbidden');
  });

  it('without the CSRF middleware: 403 csrf_failed', async () => {
    const error = await refusal(browserClient(cookie, { csrf: false }));
    expect(error.$metadata.httpStatusCode).toBe(403);
    expect(keywardCode(error)).toBe('csrf_failed');
  });

  it("a model outside the preset's allow-list: 404 (the model is in the path)", async () => {
    const error = await refusal(browserClient(cookie), { ...input, modelId: 'anthropic.claude-3-opus-20240229-v1:0' });
    expect(error.$metadata.httpStatusCode).toBe(404);
    expect(keywardCode(error)).toBe('route_not_found');
  });

  it('a field the preset does not allow (additionalModelRequestFields): 400 contract_violation', async () => {
    const error = await refusal(browserClient(cookie), { ...input, additionalModelRequestFields: { top_k: 5 } });
    expect(error.$metadata.httpStatusCode).toBe(400);
    expect(keywardCode(error)).toBe('contract_violation');
  });

  it('a system tool the preset does not allow (Nova web grounding, billed per use): 400 contract_violation; tool specs pass', async () => {
    const grounding = { systemTool: { name: 'nova_grounding' } };
    const error = await refusal(browserClient(cookie), { ...input, toolConfig: { tools: [grounding] } });
    expect(error.$metadata.httpStatusCode).toBe(400);
    expect(keywardCode(error)).toBe('contract_violation');
    const spec = { toolSpec: { name: 'get_weather', inputSchema: { json: { type: 'object', properties: {} } } } };
    await browserClient(cookie).send(new ConverseCommand({ ...input, toolConfig: { tools: [spec] } }));
    expect(requestBody()).toMatchObject({ toolConfig: { tools: [spec] } });
  });

  it('a document read from S3 (s3Location, read with the server\'s AWS key): 400 contract_violation, the API not called', async () => {
    const before = fake.requests.length;
    const error = await refusal(browserClient(cookie), {
      ...input,
      messages: [
        {
          role: 'user',
          content: [{ text: 'Summarise it' }, { document: { format: 'pdf', name: 'passport', source: { s3Location: { uri: 's3://app-uploads/users/victim/passport.pdf' } } } }],
        },
      ],
    });
    expect(error.$metadata.httpStatusCode).toBe(400);
    expect(keywardCode(error)).toBe('contract_violation');
    expect(fake.requests.length).toBe(before);
  });

  it("Keyward's 429 is throttling to the SDK: it waits for Retry-After, then the retry succeeds", async () => {
    const client = await tokenClient(
      { sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] },
      { maxAttempts: 2 },
    );
    const before = fake.requests.length;
    const seenBefore = kw.responses.length;
    await client.send(new ConverseCommand(input));
    // The SDK's own first throttling back-off is under a second: only waiting Retry-After can succeed.
    const output = await client.send(new ConverseCommand(input));
    expect(output.output?.message?.content).toEqual([{ text: FAKE_TOKENS.join('') }]);
    expect(output.$metadata.attempts).toBe(2);
    expect(kw.responses.slice(seenBefore).map((seen) => seen.status)).toEqual([200, 429, 200]);
    expect(kw.responses[seenBefore + 1]!.headers['retry-after']).toBe('1');
    expect(fake.requests.length).toBe(before + 2);
  });

  it('429 with no attempts left: the exception with status 429, Retry-After on its $response', async () => {
    const client = await tokenClient(
      { sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] },
      { maxAttempts: 1 },
    );
    await client.send(new ConverseCommand(input));
    const error = await refusal(client);
    expect(error.$metadata.httpStatusCode).toBe(429);
    expect(keywardCode(error)).toBe('rate_limited');
    expect(error.$response?.headers['retry-after']).toBe('1');
  });

  it("the API's own error keeps its type (X-Amzn-ErrorType) and passes through scrubbed: it never holds the key pair", async () => {
    fake.failNext({
      status: 403,
      headers: { 'x-amzn-errortype': 'AccessDeniedException:http://internal.amazon.com/coral/com.amazon.bedrock/' },
      body: {
        message: `User with access key ${fake.keyId} is not authorized to perform: bedrock:InvokeModel (${fake.key})`,
      },
    });
    const error = (await browserClient(cookie)
      .send(new ConverseCommand(input))
      .catch((caught: unknown) => caught)) as BedrockRuntimeServiceException;
    expect(error).toBeInstanceOf(AccessDeniedException);
    expect(error.message).toContain('is not authorized to perform: bedrock:InvokeModel');
    expect(findLeak(`${error.message}\n${JSON.stringify(error)}`, [fake.key, fake.keyId!])).toBeNull();
  });
});

describe('@aws-sdk/client-bedrock-runtime: aborts', () => {
  it('aborting mid-stream (abortSignal) closes the connection to the API', async () => {
    fake.stepwise(true);
    const controller = new AbortController();
    const response = await browserClient(cookie).send(new ConverseStreamCommand(input), {
      abortSignal: controller.signal,
    });
    const request = lastRequest();
    const seen: string[] = [];
    const error = await (async () => {
      for await (const event of response.stream!) {
        const text = event.contentBlockDelta?.delta?.text;
        if (text === undefined) continue;
        seen.push(text);
        controller.abort();
      }
    })().catch((caught: unknown) => caught);
    // The stream ends with Node's error for a response torn down half-way.
    expect(error).toMatchObject({ message: 'aborted', code: 'ECONNRESET' });
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(seen).toEqual([FAKE_TOKENS[0]]);
    expect(fake.tokensSent).toBe(1);
  });
});
