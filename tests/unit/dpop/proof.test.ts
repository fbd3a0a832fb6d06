import { describe, expect, it } from 'vitest';
import { DpopNonces, NONCE_WINDOW_MS } from '../../../lib/core/dpop/nonce';
import {
  DpopError,
  DpopProofs,
  IAT_LEEWAY_S,
  JTI_TTL_MS,
  normalizeHtu,
  requestHtu,
  type ProofExpectations,
} from '../../../lib/core/dpop/proof';
import { MemoryStore } from '../../../lib/store/memory';
import { ath, dpopKey, dpopProof, hmacProof, privateJwkProof, unsignedProof } from '../../fixtures/dpop';
import { randomSecret } from '../../fixtures/secrets';

/**
 * RFC 9449 §4.3's checks on one proof, in isolation (a memory store for the jti, an injected clock). The same
 * checks seen through the token endpoint and the proxy: tests/integration/dpop.test.ts.
 */
const URL_ = 'https://app.keyward.test/api/proxy/svc/items/1';
const TOKEN = `Fe26.2**${randomSecret('token')}`;

function proofs(now = Date.now) {
  const store = new MemoryStore(now);
  return { store, proofs: new DpopProofs(store, now) };
}

async function refusal(run: () => Promise<unknown>): Promise<DpopError> {
  try {
    await run();
  } catch (error) {
    expect(error).toBeInstanceOf(DpopError);
    return error as DpopError;
  }
  throw new Error('expected the proof to be refused');
}

const expectations: ProofExpectations = { method: 'GET', url: URL_, accessToken: TOKEN };

describe('DpopProofs.verify', () => {
  it.each(['ES256', 'EdDSA', 'PS256', 'RS256'] as const)(
    'accepts a good %s proof and returns its key thumbprint',
    async (alg) => {
      const key = await dpopKey(alg);
      const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN });
      expect(await proofs().proofs.verify(proof, { ...expectations, boundTo: key.jkt })).toEqual({ jkt: key.jkt });
    },
  );

  it('a replay is refused on another instance whose clock is behind, past the time the proof is good for on the first', async () => {
    let time = Date.now();
    const store = new MemoryStore(() => time);
    const first = new DpopProofs(store, () => time);
    const behind = new DpopProofs(store, () => time - 20_000); // an instance 20 s behind (within MAX_CLOCK_SKEW_S)
    const key = await dpopKey();
    // A device whose clock is ahead: its proof is good on the first instance now, on the other for longer.
    const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN, iat: Math.floor(time / 1000) + IAT_LEEWAY_S - 1 });
    await first.verify(proof, expectations);
    time += (2 * IAT_LEEWAY_S + 12) * 1000; // no longer good on the first instance; still on the one behind
    expect((await refusal(() => behind.verify(proof, expectations))).message).toMatch(/already used/);
  });

  it('records the jti: the same proof a second time is refused (and is remembered longer than any proof lives)', async () => {
    const { proofs: verifier, store } = proofs();
    const key = await dpopKey();
    const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN });
    await verifier.verify(proof, expectations);
    const error = await refusal(() => verifier.verify(proof, expectations));
    expect(error.code).toBe('invalid_dpop_proof');
    expect(error.message).toMatch(/already used/);
    expect(JTI_TTL_MS).toBeGreaterThan(2 * IAT_LEEWAY_S * 1000);
    // One entry, named by a hash: the proof and its jti are not in the store.
    const dump = JSON.stringify([...(store as unknown as { entries: Map<string, unknown> }).entries]);
    expect(dump).not.toContain(proof.split('.')[1]);
  });

  it('the same jti under another key is another proof', async () => {
    const { proofs: verifier } = proofs();
    const [a, b] = [await dpopKey(), await dpopKey()];
    const jti = 'the-same-jti-for-both-keys';
    await verifier.verify(await dpopProof(a, 'GET', URL_, { accessToken: TOKEN, claims: { jti } }), expectations);
    await verifier.verify(await dpopProof(b, 'GET', URL_, { accessToken: TOKEN, claims: { jti } }), expectations);
  });

  it.each([
    ['no header', null],
    ['two DPoP headers (joined by the Headers API)', 'PROOF, PROOF'],
    ['not a JWT', 'not-a-jwt'],
    ['an oversized value', `${'a'.repeat(5000)}.${'b'.repeat(5000)}.c`],
  ])('refuses %s', async (_name, header) => {
    const key = await dpopKey();
    const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN });
    const value = header?.replaceAll('PROOF', proof) ?? null;
    expect((await refusal(() => proofs().proofs.verify(value, expectations))).code).toBe('invalid_dpop_proof');
  });

  it('refuses a proof signed with HS256 (a shared secret in an oct jwk)', async () => {
    const error = await refusal(async () => proofs().proofs.verify(await hmacProof('GET', URL_), expectations));
    expect(error.message).toMatch(/ES256/);
  });

  it('refuses alg none', async () => {
    const key = await dpopKey();
    const error = await refusal(() => proofs().proofs.verify(unsignedProof(key, 'GET', URL_), expectations));
    expect(error.message).toMatch(/signed with one of/);
  });

  it('refuses a proof whose jwk holds the private key', async () => {
    const key = await dpopKey();
    const error = await refusal(async () =>
      proofs().proofs.verify(await privateJwkProof(key, 'GET', URL_), expectations),
    );
    expect(error.message).toMatch(/public key only/);
  });

  it.each([
    ['typ JWT', { typ: 'JWT' }],
    ['no typ', { typ: undefined }],
    ['no jwk', { jwk: undefined }],
    ['a jwk that is a string', { jwk: 'key' }],
  ])('refuses a header with %s', async (_name, header) => {
    const key = await dpopKey();
    const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN, header });
    expect((await refusal(() => proofs().proofs.verify(proof, expectations))).code).toBe('invalid_dpop_proof');
  });

  it('refuses an RSA key with an exponent other than 65537 before verifying (a costly signature check)', async () => {
    const key = await dpopKey('RS256');
    const jwk = { ...key.publicJwk, e: Buffer.alloc(384, 0xff).toString('base64url') };
    const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN, header: { jwk } });
    expect((await refusal(() => proofs().proofs.verify(proof, expectations))).message).toMatch(/65537/);
  });

  it('refuses a proof whose signature is not by its jwk (another key in the header)', async () => {
    const [signer, other] = [await dpopKey(), await dpopKey()];
    const proof = await dpopProof(signer, 'GET', URL_, { accessToken: TOKEN, header: { jwk: other.publicJwk } });
    expect((await refusal(() => proofs().proofs.verify(proof, expectations))).message).toMatch(/signature/);
  });

  it('refuses a tampered payload', async () => {
    const key = await dpopKey();
    const [header, , signature] = (await dpopProof(key, 'GET', URL_, { accessToken: TOKEN })).split('.');
    const payload = Buffer.from(
      JSON.stringify({
        jti: 'x'.repeat(20),
        htm: 'POST',
        htu: URL_,
        iat: Math.floor(Date.now() / 1000),
        ath: ath(TOKEN),
      }),
    ).toString('base64url');
    expect(
      (await refusal(() => proofs().proofs.verify(`${header}.${payload}.${signature}`, expectations))).message,
    ).toMatch(/signature/);
  });

  it.each([
    ['htm', { htm: 'POST' }, /htm/],
    ['htm in lower case', { htm: 'get' }, /htm/],
    ['htu of another path', { htu: 'https://app.keyward.test/api/proxy/svc/items/2' }, /htu/],
    ['htu of another host', { htu: 'https://evil.example/api/proxy/svc/items/1' }, /htu/],
    ['htu over http', { htu: 'http://app.keyward.test/api/proxy/svc/items/1' }, /htu/],
    ['htu with user info', { htu: 'https://u:p@app.keyward.test/api/proxy/svc/items/1' }, /htu/],
    ['htu that is not a URL', { htu: 'items/1' }, /htu/],
    ['no htu', { htu: undefined }, /htu/],
    ['no jti', { jti: undefined }, /jti/],
    ['a short jti', { jti: 'abc' }, /jti/],
    ['ath of another token', { ath: ath(`${TOKEN}x`) }, /ath/],
    ['no ath', { ath: undefined }, /ath/],
    ['no iat', { iat: undefined }, /iat/],
  ])('refuses a proof with %s', async (_name, claims, message) => {
    const key = await dpopKey();
    const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN, claims });
    const error = await refusal(() => proofs().proofs.verify(proof, expectations));
    expect(error.code).toBe('invalid_dpop_proof');
    expect(error.message).toMatch(message);
  });

  it(`accepts iat up to ${IAT_LEEWAY_S} s either way, and refuses a stale or a future one`, async () => {
    const now = Date.now();
    const seconds = Math.floor(now / 1000);
    const key = await dpopKey();
    const verify = async (iat: number) =>
      proofs(() => now).proofs.verify(await dpopProof(key, 'GET', URL_, { accessToken: TOKEN, iat }), expectations);
    await verify(seconds - IAT_LEEWAY_S);
    await verify(seconds + IAT_LEEWAY_S);
    expect((await refusal(() => verify(seconds - IAT_LEEWAY_S - 1))).message).toMatch(/iat/);
    expect((await refusal(() => verify(seconds + IAT_LEEWAY_S + 1))).message).toMatch(/iat/);
  });

  it('refuses a proof by another key than the bound one', async () => {
    const [bound, other] = [await dpopKey(), await dpopKey()];
    const proof = await dpopProof(other, 'GET', URL_, { accessToken: TOKEN });
    const error = await refusal(() => proofs().proofs.verify(proof, { ...expectations, boundTo: bound.jkt }));
    expect(error.message).toMatch(/another key/);
  });

  it('a refused proof does not use up its jti (the store holds nothing after a refusal)', async () => {
    const { proofs: verifier, store } = proofs();
    const [bound, other] = [await dpopKey(), await dpopKey()];
    await refusal(async () =>
      verifier.verify(await dpopProof(other, 'GET', URL_, { accessToken: TOKEN }), {
        ...expectations,
        boundTo: bound.jkt,
      }),
    );
    expect((store as unknown as { entries: Map<string, unknown> }).entries.size).toBe(0);
  });

  it('an unknown public URL (no public origin) is refused, never guessed', async () => {
    const key = await dpopKey();
    const proof = await dpopProof(key, 'GET', URL_, { accessToken: TOKEN });
    expect((await refusal(() => proofs().proofs.verify(proof, { ...expectations, url: null }))).message).toMatch(/htu/);
  });
});

describe('the nonce (token endpoint)', () => {
  const endpoint = 'https://app.keyward.test/api/session/token';

  it('without a nonce, or with one this server never issued: use_dpop_nonce; with the current one: accepted', async () => {
    let now = Date.now();
    const nonces = new DpopNonces(randomSecret('sess'), () => now);
    const other = new DpopNonces(randomSecret('sess'), () => now);
    const { proofs: verifier } = proofs(() => now);
    const key = await dpopKey();
    const verify = async (nonce?: string) =>
      verifier.verify(await dpopProof(key, 'POST', endpoint, { nonce, iat: Math.floor(now / 1000) }), {
        method: 'POST',
        url: endpoint,
        nonces,
      });
    expect((await refusal(() => verify())).code).toBe('use_dpop_nonce');
    expect((await refusal(() => verify(other.current()))).code).toBe('use_dpop_nonce');
    expect((await refusal(() => verify(`${nonces.current()}x`))).code).toBe('use_dpop_nonce');
    await verify(nonces.current());
    // The nonce check comes after every other: a proof refused for its nonce never recorded its jti.
    const proof = await dpopProof(key, 'POST', endpoint);
    await refusal(() => verifier.verify(proof, { method: 'POST', url: endpoint, nonces }));
    const issued = nonces.current();
    now += NONCE_WINDOW_MS;
    expect(nonces.current()).not.toBe(issued);
    await verify(issued);
    now += NONCE_WINDOW_MS;
    expect((await refusal(() => verify(issued))).code).toBe('use_dpop_nonce');
  });

  it('every instance with the same secret issues and accepts the same nonce; nonces rotate', () => {
    const secret = randomSecret('sess');
    let now = Date.now();
    const [a, b] = [new DpopNonces(secret, () => now), new DpopNonces(secret, () => now)];
    expect(b.isValid(a.current())).toBe(true);
    const first = a.current();
    now += NONCE_WINDOW_MS;
    expect(a.current()).not.toBe(first);
    expect(a.current()).toMatch(/^[0-9a-z]+\.[A-Za-z0-9_-]{43}$/);
    expect(a.isValid('')).toBe(false);
    expect(a.isValid(`${'z'.repeat(11)}.${'A'.repeat(43)}`)).toBe(false);
    // The current window spelt with a leading zero: refused, not a thrown length mismatch (a review found a 500).
    const [label, mac] = a.current().split('.');
    expect(a.isValid(`0${label}.${mac}`)).toBe(false);
  });
});

describe('htu', () => {
  it.each([
    ['https://App.Keyward.TEST/api/x', 'https://app.keyward.test/api/x'],
    ['https://app.keyward.test:443/api/x', 'https://app.keyward.test/api/x'],
    ['http://app.keyward.test:80/api/x', 'http://app.keyward.test/api/x'],
    ['https://app.keyward.test', 'https://app.keyward.test/'],
    ['https://app.keyward.test/api/x?q=1#f', 'https://app.keyward.test/api/x'],
    ['https://app.keyward.test/api/./y/../x', 'https://app.keyward.test/api/x'],
    ['https://app.keyward.test/api/a%2fb', 'https://app.keyward.test/api/a%2Fb'],
    ['https://app.keyward.test/api/%7Euser%41', 'https://app.keyward.test/api/~userA'],
  ])('normalises %s to %s (RFC 3986 §6.2.2–6.2.3, query and fragment ignored)', (input, output) => {
    expect(normalizeHtu(input)).toBe(output);
  });

  it.each(['wss://app.keyward.test/x', 'ftp://app.keyward.test/x', 'https://u@app.keyward.test/x', '/relative'])(
    'refuses %s',
    (input) => expect(normalizeHtu(input)).toBeNull(),
  );

  it("takes the public origin, never request.url's internal one, and the request's path without its query", () => {
    const request = new Request('http://localhost:3000/api/proxy/svc/items/1?x=1');
    expect(requestHtu(request, 'https://app.keyward.test')).toBe('https://app.keyward.test/api/proxy/svc/items/1');
    expect(requestHtu(request, null)).toBeNull();
  });
});
