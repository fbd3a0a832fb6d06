import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, signIn, startApp, startFastLane, type AppServer } from '../fixtures/app-server';
import { findLeak } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { rawRequest, type RawResponse } from '../fixtures/raw-http';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';

/**
 * ":" inside path segments through the production build (`npm test` runs `next build` first; this file builds
 * nothing): the route handlers under `next start` and the fast lane (`npm start`), same config, same raw
 * request targets sent with node:http. Both must forward the same calls to the same upstream URL and refuse the
 * same paths with the same JSON error. tests/integration/colon-paths.test.ts covers the same ground without a
 * build (Next's param matcher called directly).
 */
const geminiKey = randomSecret('gem');
const bedrockKey = randomSecret('bed');
const password = randomSecret('pw');
const sessionSecrets = testSessionSecrets();
const secrets = [geminiKey, bedrockKey, password, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];

let upstream: TestUpstream;
let lane: AppServer;
let handlers: AppServer;
const cookies = new Map<AppServer, string>();

beforeAll(async () => {
  upstream = await startUpstream();
  const configPath = writeConfigFile({
    upstreams: {
      gemini: {
        baseUrl: `${upstream.origin}/v1beta/`,
        auth: { type: 'header', name: 'x-goog-api-key', secret: { env: 'GEMINI_KEY' } },
        routes: [
          { method: 'POST', path: '/models/{model}:generateContent' },
          { method: 'GET', path: '/models/:model' },
          { method: 'GET', path: '/files/*' },
        ],
      },
      bedrock: {
        baseUrl: `${upstream.origin}/`,
        auth: { type: 'bearer', secret: { env: 'BEDROCK_KEY' } },
        routes: [{ method: 'POST', path: '/model/{modelId:colon}/converse' }],
      },
    },
  });
  const usersFile = await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]);
  const env = {
    ...sessionSecrets,
    GEMINI_KEY: geminiKey,
    BEDROCK_KEY: bedrockKey,
    KEYWARD_CONFIG: configPath,
    KEYWARD_USERS_FILE: usersFile,
  };
  const lanePort = await freePort();
  [lane, handlers] = await Promise.all([
    startFastLane(
      { ...env, KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-colon-lane-')), 'keyward.db') },
      { port: lanePort, args: ['-p', String(lanePort), '-H', '127.0.0.1'] },
    ),
    startApp({
      ...env,
      KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-colon-handlers-')), 'keyward.db'),
    }),
  ]);
  const [laneCookie, handlersCookie] = await Promise.all([
    signIn(lane.url, 'alice', password),
    signIn(handlers.url, 'alice', password),
  ]);
  cookies.set(lane, laneCookie);
  cookies.set(handlers, handlersCookie);
}, 120_000);

afterAll(async () => {
  await Promise.all([lane?.stop(), handlers?.stop()]);
  await upstream?.close();
  for (const server of [lane, handlers]) {
    if (server) expect(findLeak(server.output(), secrets), 'a secret leaked into the server log').toBeNull();
  }
});

/** The raw request target, with the session, the CSRF header and (for POST) the public Origin. */
function send(server: AppServer, method: string, path: string): Promise<RawResponse> {
  const { host } = new URL(server.url);
  const headers: Record<string, string> = { host, cookie: cookies.get(server)!, 'x-keyward-csrf': '1' };
  if (method === 'POST') Object.assign(headers, { origin: server.url, 'content-type': 'application/json' });
  return rawRequest(server.port, method, path, headers, method === 'POST' ? '{"contents":[]}' : undefined);
}

function errorCode(response: RawResponse): string | undefined {
  try {
    return (JSON.parse(response.body) as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
}

const SERVERS = () =>
  [
    ['fast lane', lane],
    ['next start', handlers],
  ] as const;

describe('":" in segments through the production build: both doors agree', () => {
  it.each([
    [
      'Gemini, literal ":"',
      'POST',
      '/api/proxy/gemini/models/gemini-2.0-flash:generateContent',
      '/v1beta/models/gemini-2.0-flash:generateContent',
    ],
    [
      'Gemini, %3A',
      'POST',
      '/api/proxy/gemini/models/gemini-2.0-flash%3AgenerateContent',
      '/v1beta/models/gemini-2.0-flash:generateContent',
    ],
    [
      'Bedrock, %3A as the AWS SDK sends it',
      'POST',
      '/api/proxy/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse',
      '/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse',
    ],
    [
      'Bedrock, literal ":"',
      'POST',
      '/api/proxy/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse',
      '/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse',
    ],
  ])('%s: forwarded to the same upstream URL', async (_label, method, path, expected) => {
    for (const [door, server] of SERVERS()) {
      const before = upstream.requests.length;
      const response = await send(server, method, path);
      expect(response.status, `${door}: ${response.body}`).toBe(200);
      expect(upstream.requests.length, door).toBe(before + 1);
      expect(upstream.requests.at(-1)!.url, door).toBe(expected);
      expect(findLeak(`${JSON.stringify(response.headers)}\n${response.body}`, secrets), door).toBeNull();
    }
  });

  it.each([
    ['"::"', '/api/proxy/gemini/models/::', 400, 'bad_path'],
    ['a leading ":"', '/api/proxy/gemini/models/:generateContent', 400, 'bad_path'],
    ['a trailing ":"', '/api/proxy/gemini/models/https:', 400, 'bad_path'],
    ['a drive letter', '/api/proxy/gemini/models/C:x', 400, 'bad_path'],
    ['a scheme', '/api/proxy/gemini/models/https:evil.example', 400, 'bad_path'],
    ['%253A', '/api/proxy/gemini/models/a%253Ab', 400, 'bad_path'],
    ['a fullwidth colon', '/api/proxy/gemini/models/a%EF%BC%9Ab', 400, 'bad_path'],
    ['":" in a * segment', '/api/proxy/gemini/files/a:b', 400, 'bad_path'],
    ['an unknown custom method', '/api/proxy/gemini/models/gemini-2.0-flash:deleteEverything', 404, 'route_not_found'],
    ['host:port in a plain :param', '/api/proxy/gemini/models/localhost:80', 404, 'route_not_found'],
  ])('%s: refused by both with the same JSON error, nothing sent upstream', async (_label, path, status, code) => {
    for (const [door, server] of SERVERS()) {
      const before = upstream.requests.length;
      const response = await send(server, 'POST', path);
      expect([response.status, errorCode(response)], `${door} ${path}`).toEqual([status, code]);
      expect(upstream.requests.length, door).toBe(before);
    }
  });
});
