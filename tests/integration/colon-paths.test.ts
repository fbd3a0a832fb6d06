import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRouteMatcher } from 'next/dist/shared/lib/router/utils/route-matcher';
import { getRouteRegex } from 'next/dist/shared/lib/router/utils/route-regex';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { createFastLane } from '../../lib/node/fast-lane';
import { capturingLogger, findLeak } from '../fixtures/claims-session';
import { rawRequest } from '../fixtures/raw-http';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * ":" inside path segments (README "### Upstreams", "Security model"), end to end through both doors against
 * a real node:http upstream that records the request target it received:
 * - the fast lane: a node:http server running lib/node/fast-lane.ts, sent raw request targets;
 * - the route handlers: the params Next's own matcher derives for `app/api/proxy/[upstream]/[[...path]]` from the
 *   same raw path (next/dist's getRouteRegex + getRouteMatcher, which decode each catch-all entry once), handed
 *   to the core as lib/next/proxy-route.ts hands them. (The production `next start` server is exercised by
 *   tests/integration/colon-paths-build.test.ts.)
 * A Gemini-like upstream (`{model}:generateContent`: the ":" is the template's, sent literally) and a
 * Bedrock-like one (`{modelId:colon}`: the ":" is the client's, sent as %3A).
 */

const APP_ORIGIN = 'https://app.keyward.test';
const geminiKey = randomSecret('gem');
const bedrockKey = randomSecret('bed');
const sessionSecrets = testSessionSecrets();
const secrets = [geminiKey, bedrockKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];
const log = capturingLogger();

let upstream: TestUpstream;
let runtime: Runtime;
let lane: Server;
let cookie: string;

const nextParams = getRouteMatcher(getRouteRegex('/api/proxy/[upstream]/[[...path]]'));

beforeAll(async () => {
  upstream = await startUpstream();
  runtime = createRuntime({
    env: {
      ...sessionSecrets,
      GEMINI_KEY: geminiKey,
      BEDROCK_KEY: bedrockKey,
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
      KEYWARD_STORE: 'memory',
    },
    logger: log.logger,
    upstreams: [
      defineUpstream('gemini', {
        baseUrl: `${upstream.origin}/v1beta/`,
        auth: { type: 'header', name: 'x-goog-api-key', secret: { env: 'GEMINI_KEY' } },
        routes: [
          { method: 'POST', path: '/models/{model}:generateContent' },
          { method: 'POST', path: '/models/{model}:streamGenerateContent' },
          { method: 'POST', path: '/models/{model}:countTokens' },
          { method: 'POST', path: '/models/{model}:embedContent' },
          { method: 'GET', path: '/models/:model' },
          { method: 'GET', path: '/files/*' },
        ],
      }),
      defineUpstream('bedrock', {
        baseUrl: `${upstream.origin}/`,
        auth: { type: 'bearer', secret: { env: 'BEDROCK_KEY' } },
        routes: [
          { method: 'POST', path: '/model/{modelId:colon}/converse' },
          { method: 'POST', path: '/model/{modelId:colon}/converse-stream' },
        ],
      }),
    ],
  });
  cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { roles: ['user'] });
  lane = createServer(
    createFastLane({
      deps: runtime,
      origin: () => APP_ORIGIN,
      next: (_req, res) => {
        res.writeHead(418);
        res.end();
      },
    }),
  );
  await new Promise<void>((resolve) => lane.listen(0, '127.0.0.1', resolve));
});

afterAll(async () => {
  await new Promise((resolve) => lane?.close(resolve));
  await upstream?.close();
  expect(findLeak(log.lines.join('\n'), secrets), 'a secret leaked into the logs').toBeNull();
});

beforeEach(() => upstream.reset());

interface Answer {
  readonly status: number;
  readonly code: string | undefined;
  readonly allow: string | undefined;
  readonly body: string;
}

function codeOf(body: string): string | undefined {
  try {
    return (JSON.parse(body) as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
}

const headers = (method: string): Record<string, string> => ({
  cookie,
  'x-keyward-csrf': '1',
  ...(method === 'POST' ? { origin: APP_ORIGIN, 'content-type': 'application/json' } : {}),
});
const BODY = '{"contents":[{"parts":[{"text":"hi"}]}]}';

/** The fast lane, sent the raw request target. */
async function viaFastLane(method: string, path: string): Promise<Answer> {
  const { port } = lane.address() as AddressInfo;
  const response = await rawRequest(port, method, path, headers(method), method === 'POST' ? BODY : undefined);
  const allow = response.headers.allow;
  return {
    status: response.status,
    code: codeOf(response.body),
    allow: typeof allow === 'string' ? allow : undefined,
    body: response.body,
  };
}

/** The route handlers' door: the params Next derives from the raw path, handed to the core. */
async function viaNextParams(method: string, path: string): Promise<Answer> {
  const params = nextParams(path.split('?')[0]!);
  if (!params) throw new Error(`Next's matcher does not match ${path}`);
  const { upstream: id, path: segments = [] } = params as { upstream: string; path?: string[] };
  const request = new Request(`${APP_ORIGIN}${path}`, {
    method,
    headers: headers(method),
    body: method === 'POST' ? BODY : undefined,
  });
  const response = await handleProxy(request, { upstream: id, path: segments }, runtime);
  const body = await response.text();
  return { status: response.status, code: codeOf(body), allow: response.headers.get('allow') ?? undefined, body };
}

const DOORS = [
  ['fast lane', viaFastLane],
  ['route handler params', viaNextParams],
] as const;

/** Sends `path` through both doors; each must forward it, and the upstream must receive `expected` both times. */
async function expectForwarded(method: string, path: string, expected: string, auth: [string, string]): Promise<void> {
  for (const [door, send] of DOORS) {
    const before = upstream.requests.length;
    const answer = await send(method, path);
    expect(answer.status, `${door}: ${answer.body}`).toBe(200);
    expect(upstream.requests.length, door).toBe(before + 1);
    const seen = upstream.requests.at(-1)!;
    expect(seen.url, door).toBe(expected);
    expect(seen.method).toBe(method);
    expect(seen.headers[auth[0]], door).toBe(auth[1]);
    expect(findLeak(answer.body, secrets), `${door}: a secret leaked`).toBeNull();
  }
}

/** Sends `path` through both doors; both must refuse it the same way, with nothing sent upstream. */
async function expectRefused(
  method: string,
  path: string,
  status: number,
  code: string,
  allow?: string,
): Promise<void> {
  for (const [door, send] of DOORS) {
    const before = upstream.requests.length;
    const answer = await send(method, path);
    expect([answer.status, answer.code], `${door} ${path}`).toEqual([status, code]);
    if (allow) expect(answer.allow, door).toBe(allow);
    expect(upstream.requests.length, `${door} ${path}: nothing may reach the upstream`).toBe(before);
    expect(answer.body).not.toContain(upstream.origin);
  }
}

describe('Gemini-style custom methods: the ":" is the template\'s and is sent literally', () => {
  const gemini: [string, string] = ['x-goog-api-key', geminiKey];

  it.each(['generateContent', 'streamGenerateContent', 'countTokens', 'embedContent'])(
    ':%s, written with a literal ":"',
    async (method) => {
      await expectForwarded(
        'POST',
        `/api/proxy/gemini/models/gemini-2.0-flash:${method}`,
        `/v1beta/models/gemini-2.0-flash:${method}`,
        gemini,
      );
    },
  );

  it.each(['%3A', '%3a'])(
    'the same call with the ":" percent-encoded (%s) reaches the same upstream URL',
    async (colon) => {
      await expectForwarded(
        'POST',
        `/api/proxy/gemini/models/gemini-2.0-flash${colon}generateContent`,
        '/v1beta/models/gemini-2.0-flash:generateContent',
        gemini,
      );
    },
  );

  it('the value is encoded as any segment is; the query passes as before', async () => {
    await expectForwarded(
      'POST',
      "/api/proxy/gemini/models/a+b$c'd:countTokens?alt=sse",
      "/v1beta/models/a%2Bb%24c'd:countTokens?alt=sse",
      gemini,
    );
  });

  it('a plain path on the same upstream is unchanged (control)', async () => {
    await expectForwarded(
      'GET',
      '/api/proxy/gemini/models/gemini-2.0-flash',
      '/v1beta/models/gemini-2.0-flash',
      gemini,
    );
    await expectForwarded('GET', '/api/proxy/gemini/files/a/b.txt', '/v1beta/files/a/b.txt', gemini);
  });

  it('the route is named by its template in the log', async () => {
    await viaFastLane('POST', '/api/proxy/gemini/models/gemini-2.0-flash:generateContent');
    const event = log.lines
      .map((line) => JSON.parse(line) as { proxy?: { route: string; target: string } })
      .findLast((entry) => entry.proxy)?.proxy;
    expect(event).toMatchObject({
      route: '/models/{model}:generateContent',
      target: `${upstream.origin}/v1beta/models/gemini-2.0-flash:generateContent`,
    });
  });
});

describe('Bedrock-style model ids: the ":" is the client\'s and is sent as %3A', () => {
  const bedrock = (): [string, string] => ['authorization', `Bearer ${bedrockKey}`];

  it.each([
    ['as the AWS SDK sends it (%3A)', '/api/proxy/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse'],
    ['written with a literal ":"', '/api/proxy/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse'],
  ])('%s', async (_label, path) => {
    await expectForwarded('POST', path, '/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse', bedrock());
  });

  it('a cross-region inference profile id and an id without ":"', async () => {
    await expectForwarded(
      'POST',
      '/api/proxy/bedrock/model/us.anthropic.claude-3-7-sonnet-20250219-v1:0/converse-stream',
      '/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream',
      bedrock(),
    );
    await expectForwarded(
      'POST',
      '/api/proxy/bedrock/model/amazon.titan-text-express-v1/converse',
      '/model/amazon.titan-text-express-v1/converse',
      bedrock(),
    );
  });

  it('a value shaped like host:port stays one encoded segment on the same upstream', async () => {
    await expectForwarded(
      'POST',
      '/api/proxy/bedrock/model/localhost:80/converse',
      '/model/localhost%3A80/converse',
      bedrock(),
    );
    await expectForwarded(
      'POST',
      '/api/proxy/bedrock/model/evil.example:443/converse',
      '/model/evil.example%3A443/converse',
      bedrock(),
    );
  });
});

describe('hostile ":" segments: refused the same way by both doors, nothing sent upstream', () => {
  it.each([
    ['":" alone', '/api/proxy/gemini/models/:'],
    ['"::"', '/api/proxy/gemini/models/::'],
    ['"a:"', '/api/proxy/gemini/models/a:'],
    ['"https:"', '/api/proxy/gemini/models/https:'],
    ['"C:"', '/api/proxy/gemini/models/C:'],
    ['a leading ":"', '/api/proxy/gemini/models/:generateContent'],
    ['an encoded leading ":"', '/api/proxy/gemini/models/%3AgenerateContent'],
    ['a scheme before the ":"', '/api/proxy/gemini/models/https:generateContent'],
    ['a scheme with its slashes encoded', '/api/proxy/gemini/models/https:%2f%2fevil.example'],
    ['a doubled ":"', '/api/proxy/gemini/models/gemini::generateContent'],
    ['%3A encoded twice (%253A)', '/api/proxy/gemini/models/gemini%253AgenerateContent'],
    ['a fullwidth colon U+FF1A', '/api/proxy/gemini/models/gemini%EF%BC%9AgenerateContent'],
    ['a modifier letter colon U+A789', '/api/proxy/gemini/models/gemini%EA%9E%89generateContent'],
    ['":" in a * segment', '/api/proxy/gemini/files/a/b:c'],
    ['":" where no route of the upstream has one', '/api/proxy/gemini/files:x/a'],
    ['a drive letter as a Bedrock id', '/api/proxy/bedrock/model/C:x/converse'],
    ['a scheme as a Bedrock id', '/api/proxy/bedrock/model/https:evil.example/converse'],
    ['a trailing ":" in a Bedrock id', '/api/proxy/bedrock/model/anthropic.claude-v2:/converse'],
    ['a leading ":" in a Bedrock id', '/api/proxy/bedrock/model/%3A0/converse'],
  ])('%s: 400 bad_path', async (_label, path) => {
    await expectRefused('POST', path, 400, 'bad_path');
  });

  it.each([
    ['an unknown custom method', '/api/proxy/gemini/models/gemini-2.0-flash:deleteEverything'],
    ['a custom method in the wrong case', '/api/proxy/gemini/models/gemini-2.0-flash:GenerateContent'],
    ['":" in a value that does not allow it', '/api/proxy/gemini/models/ab:cd:generateContent'],
    ['host:port where only {model}:<method> has a ":"', '/api/proxy/gemini/models/localhost:80'],
  ])('%s, where a route has a ":": 404 route_not_found', async (_label, path) => {
    await expectRefused('POST', path, 404, 'route_not_found');
  });

  it('a declared ":" path under another method: 405 with Allow, as for any path', async () => {
    await expectRefused(
      'GET',
      '/api/proxy/gemini/models/gemini-2.0-flash:generateContent',
      405,
      'method_not_allowed',
      'POST',
    );
  });
});
