import { randomUUID } from 'node:crypto';
import { Octokit } from '@octokit/rest';
import { RequestError } from '@octokit/request-error';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { github } from '../../lib/core/presets';
import { FAKE_TOKENS, GITHUB_FOREIGN_LINK, GITHUB_REPOSITORY_ID, type FakeApi } from '../fixtures/fake-apis';
import { closeAfterLeakChecks, MEMBER_ROLE, sdkTestPolicy, startKeyward, THROTTLED_ROLE, type KeywardServer } from '../fixtures/keyward-server';

/**
 * `@octokit/rest` against Keyward over real HTTP, with the `github` preset (pinned to one repository, writes
 * allowed) pointed at a local fake of the GitHub REST API that checks `Authorization: Bearer|token <real key>`.
 * In the browser Octokit gets no `auth` at all (the cookie is the credential) and a `before` hook adds the CSRF
 * header; cookie-less, a hook sends the session token as `Authorization: Bearer` (Octokit's own `auth: token`
 * would send `token <…>`, which is not how a Keyward session token is presented).
 */

const OWNER = 'acme';
/** Octokit logs every failed request on console.error; the failures here are the point of the tests. */
const log = { debug() {}, info() {}, warn() {}, error() {} };
const REPO = 'widgets';

let kw: KeywardServer;
let fake: FakeApi;
let cookie: string;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['github'], (fakes) => [
    github({ baseUrl: `${fakes.github!.origin}/`, repos: [`${OWNER}/${REPO}`], write: true, ...sdkTestPolicy }),
    // As a team that once listed `link` itself, to get pagination before Keyward rewrote links.
    github({ id: 'github-listed', baseUrl: `${fakes.github!.origin}/`, repos: [`${OWNER}/${REPO}`], responseHeaders: ['link'], ...sdkTestPolicy }),
  ]);
  fake = kw.fakes.github!;
  cookie = await kw.cookie();
});

afterAll(async () => {
  await closeAfterLeakChecks(kw, [cookie.split('=')[1]!, ...tokens]);
});

beforeEach(() => fake.stepwise(false));

/** The browser setup the README documents (the test's fetch adds what the browser would: cookie, Origin). */
function browserOctokit(sessionCookie: string | null, csrf = true): Octokit {
  const octokit = new Octokit({ baseUrl: `${kw.origin}/api/proxy/github`, log, request: { fetch: sessionCookie === null ? fetch : kw.browserFetch(sessionCookie) } });
  if (csrf) {
    octokit.hook.before('request', (options) => {
      if (!octokit.request.endpoint.parse(options).url.startsWith(`${kw.origin}/api/proxy/`)) return;
      options.headers['x-keyward-csrf'] = '1';
    });
  }
  return octokit;
}

/** Cookie-less: the bearer session token, presented as Keyward expects it, and only to Keyward (as in the README). */
async function tokenOctokit(identity: Parameters<KeywardServer['bearer']>[0] = {}, upstream = 'github'): Promise<{ octokit: Octokit; token: string }> {
  const token = await kw.bearer(identity);
  tokens.push(token);
  const octokit = new Octokit({ baseUrl: `${kw.origin}/api/proxy/${upstream}`, log });
  octokit.hook.before('request', (options) => {
    if (!octokit.request.endpoint.parse(options).url.startsWith(`${kw.origin}/api/proxy/`)) return;
    options.headers.authorization = `Bearer ${token}`;
  });
  return { octokit, token };
}

function lastRequest() {
  return fake.requests.at(-1)!;
}

async function requestError(call: Promise<unknown>): Promise<RequestError> {
  const error = await call.catch((caught: unknown) => caught);
  expect(error).toBeInstanceOf(RequestError);
  return error as RequestError;
}

const keywardCode = (error: RequestError) => (error.response?.data as { error: { code: string } }).error.code;

describe('@octokit/rest through Keyward', () => {
  it('lists issues with query parameters; the API sees the real token and nothing of the client', async () => {
    const { data, status } = await browserOctokit(cookie).rest.issues.listForRepo({ owner: OWNER, repo: REPO, state: 'open', per_page: 10 });
    expect(status).toBe(200);
    expect(data.map((issue) => issue.number)).toEqual(FAKE_TOKENS.map((_, i) => i + 1));
    const request = lastRequest();
    const url = new URL(request.url, fake.origin);
    expect(url.pathname).toBe(`/repos/${OWNER}/${REPO}/issues`);
    expect(Object.fromEntries(url.searchParams)).toEqual({ state: 'open', per_page: '10' });
    expect(request.headers.authorization).toBe(`Bearer ${fake.key}`);
    expect(request.headers.cookie).toBeUndefined();
    expect(request.headers['x-keyward-csrf']).toBeUndefined();
  });

  it('creates an issue (a POST: CSRF header and the page Origin)', async () => {
    const { data, status } = await browserOctokit(cookie).rest.issues.create({ owner: OWNER, repo: REPO, title: 'Rotate the key', body: 'Keyward makes it painless.' });
    expect(status).toBe(201);
    expect(data).toMatchObject({ number: 42, title: 'Rotate the key', body: 'Keyward makes it painless.' });
    expect(JSON.parse(lastRequest().bodyPreview.toString('utf8'))).toEqual({ title: 'Rotate the key', body: 'Keyward makes it painless.' });
  });

  it('a cookie-less client sends its bearer session token from a hook', async () => {
    const { octokit } = await tokenOctokit();
    const { data } = await octokit.rest.repos.get({ owner: OWNER, repo: REPO });
    expect(data.full_name).toBe(`${OWNER}/${REPO}`);
    expect(lastRequest().headers.authorization).toBe(`Bearer ${fake.key}`);
  });

  it("Octokit's own `auth: <session token>` sends `token <…>`, which Keyward does not read as a session: 401", async () => {
    const token = await kw.bearer();
    tokens.push(token);
    const before = fake.requests.length;
    const error = await requestError(new Octokit({ baseUrl: `${kw.origin}/api/proxy/github`, auth: token, log }).rest.repos.get({ owner: OWNER, repo: REPO }));
    expect(error.status).toBe(401);
    expect(fake.requests.length).toBe(before);
  });
});

describe('@octokit/rest: pagination (Link headers)', () => {
  const issueNumbers = FAKE_TOKENS.map((_, i) => i + 1);

  it("octokit.paginate gets every page: GitHub's page links come back on Keyward's proxy path, on the route called", async () => {
    const before = fake.requests.length;
    const seen = kw.responses.length;
    const octokit = browserOctokit(cookie);
    const issues = await octokit.paginate(octokit.rest.issues.listForRepo, { owner: OWNER, repo: REPO, state: 'open', per_page: 2 });
    expect(issues.map((issue) => issue.number)).toEqual(issueNumbers);
    // Every page through Keyward, on the named route (GitHub's `/repositories/<id>/…` form is never called).
    const calls = fake.requests.slice(before).map((request) => new URL(request.url, fake.origin));
    expect(calls.map((url) => url.pathname)).toEqual(Array(3).fill(`/repos/${OWNER}/${REPO}/issues`));
    expect(calls.map((url) => url.searchParams.get('page'))).toEqual([null, '2', '3']);
    expect(fake.requests.slice(before).every((request) => request.headers.authorization === `Bearer ${fake.key}`)).toBe(true);
    const links = kw.responses.slice(seen).map((response) => pageLinks(response.headers.link, { state: 'open', per_page: '2' }));
    expect(links).toEqual([
      ['next 2', 'last 3'],
      ['prev 1', 'next 3', 'last 3', 'first 1'],
      ['prev 2', 'first 1'],
    ]);
  });

  it("a link to another host is dropped; none names the API's origin", async () => {
    const seen = kw.responses.length;
    const octokit = browserOctokit(cookie);
    const { headers } = await octokit.rest.issues.listForRepo({ owner: OWNER, repo: REPO, per_page: 4 });
    expect(pageLinks(headers.link, { per_page: '4' })).toEqual(['next 2', 'last 2']);
    const written = String(kw.responses[seen]!.headers.link);
    expect(written).not.toContain(GITHUB_FOREIGN_LINK);
    expect(written).not.toContain(fake.origin);
    expect(written).not.toContain('/repositories/');
  });

  it("cookie-less with `link` in responseHeaders: paginate still goes through Keyward, and the session token never reaches another URL", async () => {
    const before = fake.requests.length;
    const { octokit, token } = await tokenOctokit({}, 'github-listed');
    const issues = await octokit.paginate(octokit.rest.issues.listForRepo, { owner: OWNER, repo: REPO, per_page: 4 }).catch((error: unknown) => error);
    const received = fake.requests.slice(before);
    expect(received.filter((request) => String(request.headers.authorization).includes(token))).toEqual([]);
    expect(received.map((request) => request.headers.authorization)).toEqual([`Bearer ${fake.key}`, `Bearer ${fake.key}`]);
    expect((issues as Array<{ number: number }>).map((issue) => issue.number)).toEqual(issueNumbers);
  });

  it("the README's hook adds the session token only to requests under Keyward's /api/proxy/", async () => {
    const before = fake.requests.length;
    const { octokit, token } = await tokenOctokit();
    const error = await requestError(octokit.request(`GET ${fake.origin}/repositories/${GITHUB_REPOSITORY_ID}/issues`));
    expect(error.status).toBe(401);
    const received = fake.requests.slice(before);
    expect(received).toHaveLength(1);
    expect(received[0]!.headers.authorization).toBeUndefined();
    expect(JSON.stringify(received[0]!.headers)).not.toContain(token);
  });
});

/**
 * A Link header's links as `<rel> <page>`, each checked to be on Keyward's proxy path for the route called, with
 * the list's other query parameters and nothing else (the header holds no other link).
 */
function pageLinks(header: unknown, query: Record<string, string>): string[] {
  const links = [...String(header).matchAll(/<([^<>]*)>; rel="([a-z]+)"/g)];
  expect(links.length).toBe(String(header).split('<').length - 1);
  return links.map(([, target = '', rel]) => {
    const url = new URL(target);
    expect(`${url.origin}${url.pathname}`).toBe(`${kw.origin}/api/proxy/github/repos/${OWNER}/${REPO}/issues`);
    const { page, ...rest } = Object.fromEntries(url.searchParams);
    expect(rest).toEqual(query);
    return `${rel} ${page}`;
  });
}

describe("@octokit/rest: Keyward's refusals as RequestError", () => {
  it('no session: 401', async () => {
    const error = await requestError(browserOctokit(null).rest.issues.listForRepo({ owner: OWNER, repo: REPO }));
    expect(error.status).toBe(401);
    expect(keywardCode(error)).toBe('unauthenticated');
  });

  it('a session without the role: 403; without the CSRF header: 403', async () => {
    const forbidden = await requestError(browserOctokit(await kw.cookie({ roles: ['user'] })).rest.issues.listForRepo({ owner: OWNER, repo: REPO }));
    expect(forbidden.status).toBe(403);
    expect(keywardCode(forbidden)).toBe('forbidden');
    const noCsrf = await requestError(browserOctokit(cookie, false).rest.issues.listForRepo({ owner: OWNER, repo: REPO }));
    expect(noCsrf.status).toBe(403);
    expect(keywardCode(noCsrf)).toBe('csrf_failed');
  });

  it('a repository outside the preset\'s "repos": 404', async () => {
    const before = fake.requests.length;
    const error = await requestError(browserOctokit(cookie).rest.issues.listForRepo({ owner: 'someone', repo: 'else' }));
    expect(error.status).toBe(404);
    expect(keywardCode(error)).toBe('route_not_found');
    expect(fake.requests.length).toBe(before);
  });

  it("Keyward's 429: RequestError with status 429 and Retry-After (Octokit does not retry it on its own)", async () => {
    const { octokit } = await tokenOctokit({ sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] });
    await octokit.rest.repos.get({ owner: OWNER, repo: REPO });
    const before = fake.requests.length;
    const error = await requestError(octokit.rest.repos.get({ owner: OWNER, repo: REPO }));
    expect(error.status).toBe(429);
    expect(keywardCode(error)).toBe('rate_limited');
    expect(error.response?.headers['retry-after']).toBe('1');
    expect(fake.requests.length).toBe(before);
  });

  it('a Retry-After hook (as the README shows) waits, then the retry succeeds', async () => {
    const { octokit } = await tokenOctokit({ sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] });
    honourRetryAfter(octokit);
    const before = fake.requests.length;
    const seenBefore = kw.responses.length;
    await octokit.rest.repos.get({ owner: OWNER, repo: REPO });
    const { data } = await octokit.rest.repos.get({ owner: OWNER, repo: REPO });
    expect(data.full_name).toBe(`${OWNER}/${REPO}`);
    expect(kw.responses.slice(seenBefore).map((seen) => seen.status)).toEqual([200, 429, 200]);
    expect(kw.responses[seenBefore + 1]!.headers['retry-after']).toBe('1');
    expect(fake.requests.length).toBe(before + 2);
  });
});

/** Retries a 429 once, after the seconds its Retry-After names (RFC 9110 §10.2.3). As in the README. */
function honourRetryAfter(octokit: Octokit): void {
  octokit.hook.wrap('request', async (request, options) => {
    try {
      return await request(options);
    } catch (error) {
      const seconds = error instanceof RequestError && error.status === 429 ? Number(error.response?.headers['retry-after']) : NaN;
      if (!(seconds >= 0 && seconds <= 60)) throw error;
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      return request(options);
    }
  });
}

describe('@octokit/rest: aborts', () => {
  it('aborting while the listing arrives closes the connection to the API', async () => {
    fake.stepwise(true);
    const controller = new AbortController();
    const call = browserOctokit(cookie).rest.issues.listForRepo({ owner: OWNER, repo: REPO, request: { signal: controller.signal } });
    const settled = call.catch((caught: unknown) => caught);
    // The fake has sent the first issue and holds the rest: abort now.
    await fake.waitForTokens(1);
    const request = lastRequest();
    controller.abort();
    const error = (await settled) as Error;
    expect(error.name).toBe('AbortError');
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(fake.tokensSent).toBe(1);
  });
});
