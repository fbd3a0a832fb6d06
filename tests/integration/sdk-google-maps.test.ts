import { randomUUID } from 'node:crypto';
import { Client, Status, type Config } from '@googlemaps/google-maps-services-js';
import axios, { AxiosError, type AxiosInstance, type InternalAxiosRequestConfig } from 'axios';
import * as rax from 'retry-axios';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { googleMaps } from '../../lib/core/presets';
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
 * The official `@googlemaps/google-maps-services-js` (a Node client: server code) against Keyward over real
 * HTTP, with the `google-maps` preset pointed at a local fake of the Maps web services that checks the key as
 * they do: the `key` query parameter, exactly once (a wrong key is answered 200 REQUEST_DENIED).
 *
 * The SDK has no base-URL option: every method sends its own absolute URL
 * (`https://maps.googleapis.com/maps/api/geocode/json`, …) through the axios instance it is given. It also
 * insists on `params.key`, which Keyward refuses from a client (400: the real key is Keyward's to add). So the
 * client gets an axios instance whose request interceptor sends `https://maps.googleapis.com/maps/api/<path>`
 * to `<site>/api/proxy/google-maps/<path>` and drops the placeholder key, with the bearer session token as
 * `Authorization`. An instance of one's own comes without the SDK's retries, so retry-axios (the SDK's own retry
 * library) is attached to it, as the SDK does to the instance it makes.
 */

const PLACEHOLDER = `AIza-keyward-placeholder-${randomUUID()}`;
const MAPS_API = 'https://maps.googleapis.com/maps/api/';
const ADDRESS = '1600 Amphitheatre Parkway, Mountain View, CA';

let kw: KeywardServer;
let fake: FakeApi;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['google-maps'], (fakes) => [
    googleMaps({ baseUrl: `${fakes['google-maps']!.origin}/maps/api/`, ...sdkTestPolicy }),
  ]);
  fake = kw.fakes['google-maps']!;
});

afterAll(async () => {
  // The SDK's placeholder key and every bearer session token never reach the API.
  await closeAfterLeakChecks(kw, [PLACEHOLDER, ...tokens]);
});

beforeEach(() => fake.stepwise(false));

/** The README's interceptor: the SDK's absolute URL to Keyward's proxy path, and its placeholder key dropped. */
function toKeyward(config: InternalAxiosRequestConfig): InternalAxiosRequestConfig {
  config.url = keywardUrl(config.url);
  if (config.params) config.params = withoutKey(config.params as Record<string, unknown>);
  return config;
}

function keywardUrl(url: string | undefined): string | undefined {
  return url?.startsWith(MAPS_API) ? `${kw.origin}/api/proxy/google-maps/${url.slice(MAPS_API.length)}` : url;
}

function withoutKey(params: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(params).filter(([name]) => name !== 'key'));
}

interface Setup {
  /** Retries (retry-axios) for a 429 or a 5xx; 0: none. */
  readonly retry?: number;
  /** false: only the URL is rewritten, the SDK's key goes out as it is. */
  readonly dropKey?: boolean;
}

/** An axios instance for a cookie-less caller: the bearer session token as Authorization. */
async function keywardAxios(
  identity: SdkIdentity = {},
  { retry = 0, dropKey = true }: Setup = {},
): Promise<AxiosInstance> {
  const token = await kw.bearer(identity);
  tokens.push(token);
  const config: Config = { headers: { Authorization: `Bearer ${token}` }, raxConfig: { retry } };
  const instance = axios.create(config);
  instance.interceptors.request.use(
    dropKey
      ? toKeyward
      : (request) => {
          request.url = keywardUrl(request.url);
          return request;
        },
  );
  if (retry > 0) rax.attach(instance);
  return instance;
}

/** No session at all: the interceptor, no Authorization. */
function anonymousClient(): Client {
  const instance = axios.create();
  instance.interceptors.request.use(toKeyward);
  return new Client({ axiosInstance: instance });
}

async function mapsClient(identity: SdkIdentity = {}, setup: Setup = {}): Promise<Client> {
  return new Client({ axiosInstance: await keywardAxios(identity, setup) });
}

function lastRequest() {
  return fake.requests.at(-1)!;
}

function receivedQuery(): URLSearchParams {
  return new URL(lastRequest().url, 'http://fake.invalid').searchParams;
}

/** Keyward's error body, `{"error":{"code","message","requestId"}}`, as axios keeps it. */
function keywardCode(error: AxiosError): string {
  return (error.response?.data as { error: { code: string } }).error.code;
}

function throttled(): SdkIdentity {
  return { sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] };
}

describe('@googlemaps/google-maps-services-js through Keyward', () => {
  it('geocode: the API gets the real key once, and nothing of the client', async () => {
    const maps = await mapsClient();
    const { data } = await maps.geocode({
      params: { address: ADDRESS, components: { country: 'US' }, key: PLACEHOLDER },
    });
    expect(data.status).toBe(Status.OK);
    expect(data.results.map((result) => result.place_id)).toEqual(FAKE_TOKENS.map((_, i) => `ChIJfake${i}`));
    const request = lastRequest();
    expect(request.url.startsWith('/maps/api/geocode/json?')).toBe(true);
    const query = receivedQuery();
    expect(query.getAll('key')).toEqual([fake.key]);
    // The SDK's own serialisation (an object as `name:value`) passes the preset's query contract as it is.
    expect(query.get('address')).toBe(ADDRESS);
    expect(query.get('components')).toBe('country:US');
    expect(request.headers.authorization).toBeUndefined();
  });

  it('timezone and elevation: Dates and coordinates as the SDK serialises them', async () => {
    const maps = await mapsClient();
    const timestamp = new Date('2026-06-01T12:00:00Z');
    const zone = await maps.timezone({
      params: { location: { lat: 37.42, lng: -122.08 }, timestamp, key: PLACEHOLDER },
    });
    expect(zone.data.timeZoneId).toBe('America/Los_Angeles');
    expect(receivedQuery().get('timestamp')).toBe(String(timestamp.getTime() / 1000));
    expect(receivedQuery().get('location')).toBe('37.42,-122.08');
    expect(receivedQuery().getAll('key')).toEqual([fake.key]);

    const elevation = await maps.elevation({
      params: { locations: [{ lat: 39.739, lng: -104.984 }], key: PLACEHOLDER },
    });
    expect(elevation.data.results[0]?.elevation).toBe(1608.64);
    expect(lastRequest().url.startsWith('/maps/api/elevation/json?')).toBe(true);
    expect(receivedQuery().getAll('key')).toEqual([fake.key]);
  });

  it("the SDK's placeholder key, if not dropped, is refused (400) and never forwarded", async () => {
    const before = fake.requests.length;
    const maps = await mapsClient({}, { dropKey: false });
    const error = (await maps
      .geocode({ params: { address: ADDRESS, key: PLACEHOLDER } })
      .catch((caught: unknown) => caught)) as AxiosError;
    expect(error).toBeInstanceOf(AxiosError);
    // `key` is in no route's query contract (and a client's key is refused in any spelling besides).
    expect(error.response?.status).toBe(400);
    expect(keywardCode(error)).toBe('contract_violation');
    expect(fake.requests.length).toBe(before);
  });
});

describe("@googlemaps/google-maps-services-js: Keyward's refusals as axios errors", () => {
  async function refusal(maps: Client, address = ADDRESS): Promise<AxiosError> {
    const before = fake.requests.length;
    const error = await maps.geocode({ params: { address, key: PLACEHOLDER } }).catch((caught: unknown) => caught);
    // Refused by Keyward: nothing reached the API.
    expect(fake.requests.length).toBe(before);
    expect(error).toBeInstanceOf(AxiosError);
    return error as AxiosError;
  }

  it('no session: 401', async () => {
    const error = await refusal(anonymousClient());
    expect(error.response?.status).toBe(401);
    expect(keywardCode(error)).toBe('unauthenticated');
  });

  it('a session without the role: 403', async () => {
    const error = await refusal(await mapsClient({ roles: ['user'] }));
    expect(error.response?.status).toBe(403);
    expect(keywardCode(error)).toBe('forbidden');
  });

  it("a query outside the route's contract: 400 contract_violation", async () => {
    const error = await refusal(await mapsClient(), 'x'.repeat(600));
    expect(error.response?.status).toBe(400);
    expect(keywardCode(error)).toBe('contract_violation');
  });

  it("Keyward's 429 with no retries: the axios error carries status 429 and Retry-After", async () => {
    const maps = await mapsClient(throttled());
    await maps.geocode({ params: { address: ADDRESS, key: PLACEHOLDER } });
    const error = await refusal(maps);
    expect(error.response?.status).toBe(429);
    expect(keywardCode(error)).toBe('rate_limited');
    expect(error.response?.headers['retry-after']).toBe('1');
  });

  it('with retry-axios attached (as the SDK attaches it to its own instance): waits Retry-After, then the retry succeeds', async () => {
    const maps = await mapsClient(throttled(), { retry: 1 });
    const before = fake.requests.length;
    const seenBefore = kw.responses.length;
    await maps.geocode({ params: { address: ADDRESS, key: PLACEHOLDER } });
    // retry-axios's own first back-off is half a second: only waiting Retry-After (1 s) can succeed.
    const { data } = await maps.geocode({ params: { address: ADDRESS, key: PLACEHOLDER } });
    expect(data.status).toBe(Status.OK);
    expect(kw.responses.slice(seenBefore).map((seen) => seen.status)).toEqual([200, 429, 200]);
    expect(kw.responses[seenBefore + 1]!.headers['retry-after']).toBe('1');
    expect(fake.requests.length).toBe(before + 2);
  });

  it("the API's own refusal passes through scrubbed: the answer never holds the real key", async () => {
    fake.failNext({
      status: 200,
      body: { error_message: `The provided API key ${fake.key} is invalid.`, results: [], status: 'REQUEST_DENIED' },
    });
    const { data } = await (await mapsClient()).geocode({ params: { address: ADDRESS, key: PLACEHOLDER } });
    expect(data.status).toBe(Status.REQUEST_DENIED);
    expect(data.error_message).toContain('The provided API key');
    expect(findLeak(JSON.stringify(data), [fake.key])).toBeNull();
  });
});

describe('@googlemaps/google-maps-services-js: aborts', () => {
  it('aborting while the answer arrives closes the connection to the API', async () => {
    fake.stepwise(true);
    const controller = new AbortController();
    const call = (await mapsClient()).geocode({
      params: { address: ADDRESS, key: PLACEHOLDER },
      signal: controller.signal,
    });
    const settled = call.catch((caught: unknown) => caught);
    // The fake has sent the first result and holds the rest: abort now.
    await fake.waitForTokens(1);
    const request = lastRequest();
    controller.abort();
    expect(axios.isCancel(await settled)).toBe(true);
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(fake.tokensSent).toBe(1);
  });
});
