import { decode, encode } from '@auth/core/jwt';
import { sealData } from 'iron-session';
import { describe, expect, it } from 'vitest';
import { KeywardError } from '../../../lib/core/errors';
import { SESSION_COOKIE } from '../../../lib/core/session/session';
import { createSessionVerifier, type SessionSecrets } from '../../../lib/core/session/verify';
import { randomSecret } from '../../fixtures/secrets';
import { editableUsersFile } from '../support';
import { SessionRevocations } from '../../../lib/core/session/revocation';
import { MemoryStore } from '../../../lib/store/memory';

const secrets: SessionSecrets = { authSecret: randomSecret('auth'), sessionSecret: randomSecret('sess') };
const verify = createSessionVerifier(secrets);

const claims = () => ({ sub: 'user-1', name: 'Ada', roles: ['user', 'admin'], sid: `sid-${randomSecret('s')}` });

/** Mints the Auth.js session cookie value the way Auth.js does (salt = cookie name). */
function mintCookie(token: Record<string, unknown>, options: { secret?: string; salt?: string; maxAge?: number } = {}) {
  return encode({
    token,
    secret: options.secret ?? secrets.authSecret,
    salt: options.salt ?? SESSION_COOKIE,
    maxAge: options.maxAge ?? 3600,
  });
}

function mintBearer(payload: Record<string, unknown>, password = secrets.sessionSecret) {
  return sealData(payload, { password });
}

const withCookie = (cookie: string) => new Request('https://app.example/api/proxy/x', { headers: { cookie } });
const withAuthorization = (authorization: string) =>
  new Request('https://app.example/api/proxy/x', { headers: { authorization } });

/** Changes one character in the middle of the ciphertext (every character there carries 6 full bits). */
function tamper(token: string): string {
  const parts = token.split('.');
  const ciphertext = parts[3]!;
  const i = Math.floor(ciphertext.length / 2);
  parts[3] = ciphertext.slice(0, i) + (ciphertext[i] === 'A' ? 'B' : 'A') + ciphertext.slice(i + 1);
  return parts.join('.');
}

describe('cookie sessions', () => {
  it('reads a valid Auth.js session cookie', async () => {
    const c = claims();
    const token = await mintCookie(c);
    const { exp } = (await decode({ token, secret: secrets.authSecret, salt: SESSION_COOKIE }))!;
    const session = await verify(withCookie(`other=1; ${SESSION_COOKIE}=${token}; x=y`));
    expect(session).toMatchObject({
      userId: 'user-1',
      name: 'Ada',
      roles: ['user', 'admin'],
      sessionId: c.sid,
      via: 'cookie',
      expiresAt: exp! * 1000,
    });
  });

  it('refuses a tampered cookie', async () => {
    const token = await mintCookie(claims());
    expect(await verify(withCookie(`${SESSION_COOKIE}=${tamper(token)}`))).toBeNull();
  });

  it('refuses a truncated or garbage cookie', async () => {
    const token = await mintCookie(claims());
    expect(await verify(withCookie(`${SESSION_COOKIE}=${token.slice(0, -5)}`))).toBeNull();
    expect(await verify(withCookie(`${SESSION_COOKIE}=garbage`))).toBeNull();
    expect(await verify(withCookie(`${SESSION_COOKIE}=`))).toBeNull();
  });

  it('refuses a cookie made with another secret or another salt', async () => {
    expect(await verify(withCookie(`${SESSION_COOKIE}=${await mintCookie(claims(), { secret: randomSecret() })}`))).toBeNull();
    expect(
      await verify(withCookie(`${SESSION_COOKIE}=${await mintCookie(claims(), { salt: 'authjs.session-token' })}`)),
    ).toBeNull();
  });

  it('refuses an expired cookie (JWT exp in the past)', async () => {
    const token = await mintCookie(claims(), { maxAge: -3600 });
    expect(await verify(withCookie(`${SESSION_COOKIE}=${token}`))).toBeNull();
  });

  it("applies its own clock: valid until exp, refused from exp on", async () => {
    const token = await mintCookie(claims());
    const { exp } = (await decode({ token, secret: secrets.authSecret, salt: SESSION_COOKIE }))!;
    const at = (ms: number) => createSessionVerifier(secrets, { now: () => ms })(withCookie(`${SESSION_COOKIE}=${token}`));
    expect(await at(exp! * 1000 - 1)).not.toBeNull();
    expect(await at(exp! * 1000)).toBeNull();
    expect(await at(exp! * 1000 + 3_600_000)).toBeNull();
  });

  it.each([
    ['sid missing', { sub: 'u', roles: [] }],
    ['sid empty', { sub: 'u', sid: '' }],
    ['sid not a string', { sub: 'u', sid: 42 }],
    ['sub missing', { sid: 's' }],
    ['sub empty', { sub: '', sid: 's' }],
  ])('refuses a cookie with %s', async (_label, token) => {
    expect(await verify(withCookie(`${SESSION_COOKIE}=${await mintCookie(token)}`))).toBeNull();
  });

  it('keeps only string roles', async () => {
    const token = await mintCookie({ sub: 'u', sid: 's', roles: ['user', 1, null, { admin: true }] });
    expect((await verify(withCookie(`${SESSION_COOKIE}=${token}`)))?.roles).toEqual(['user']);
  });

  it('joins a cookie chunked as .0 and .1, in index order', async () => {
    const c = claims();
    const token = await mintCookie(c);
    const half = Math.floor(token.length / 2);
    const [a, b] = [token.slice(0, half), token.slice(half)];
    const inOrder = await verify(withCookie(`${SESSION_COOKIE}.0=${a}; ${SESSION_COOKIE}.1=${b}`));
    expect(inOrder).toMatchObject({ userId: 'user-1', sessionId: c.sid });
    const reversed = await verify(withCookie(`${SESSION_COOKIE}.1=${b}; ${SESSION_COOKIE}.0=${a}`));
    expect(reversed).toMatchObject({ userId: 'user-1', sessionId: c.sid });
  });

  it('refuses chunks that are incomplete or swapped', async () => {
    const token = await mintCookie(claims());
    const half = Math.floor(token.length / 2);
    const [a, b] = [token.slice(0, half), token.slice(half)];
    expect(await verify(withCookie(`${SESSION_COOKIE}.1=${b}`))).toBeNull();
    expect(await verify(withCookie(`${SESSION_COOKIE}.0=${a}`))).toBeNull();
    expect(await verify(withCookie(`${SESSION_COOKIE}.0=${b}; ${SESSION_COOKIE}.1=${a}`))).toBeNull();
  });

  it('refuses the token under another cookie name', async () => {
    const token = await mintCookie(claims());
    expect(await verify(withCookie(`keyward.session=${token}`))).toBeNull();
    expect(await verify(withCookie(`authjs.session-token=${token}`))).toBeNull();
  });
});

describe('bearer sessions', () => {
  const exp = () => Math.floor(Date.now() / 1000) + 3600;

  it('reads a token of up to 12,288 characters (a user in many groups), and refuses a longer one unread', async () => {
    /** A token of the user with `groups` roles of 20 characters each, and its length. */
    const tokenWith = async (groups: number) => {
      const roles = Array.from({ length: groups }, (_, i) => `group-${String(i).padStart(14, '0')}`);
      return mintBearer({ ...claims(), roles, exp: exp(), typ: 'keyward.session' });
    };
    // Grown to the longest token under the limit, then one group more.
    let groups = 300;
    while ((await tokenWith(groups + 1)).length <= 12_288) groups++;
    const longest = await tokenWith(groups);
    const over = await tokenWith(groups + 1);
    // A group adds about 27 characters: the longest token is within two groups of the limit.
    expect(longest.length).toBeGreaterThan(12_288 - 64);
    expect((await verify(withAuthorization(`Bearer ${longest}`)))?.roles).toHaveLength(groups);
    expect(await verify(withAuthorization(`Bearer ${over}`))).toBeNull();
  });

  it('reads a sealed bearer token', async () => {
    const c = claims();
    const token = await mintBearer({ ...c, exp: exp(), typ: 'keyward.session' });
    const session = await verify(withAuthorization(`Bearer ${token}`));
    expect(session).toMatchObject({ userId: 'user-1', roles: ['user', 'admin'], sessionId: c.sid, via: 'bearer' });
  });

  it('reads the scheme in any letter case (RFC 9110 §11.1), as SDKs send it', async () => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session' });
    for (const scheme of ['bearer', 'BEARER', 'bEaReR']) expect((await verify(withAuthorization(`${scheme} ${token}`)))?.via).toBe('bearer');
  });

  it('works when other cookies (but no session cookie) are present', async () => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session' });
    const request = new Request('https://app.example/x', { headers: { authorization: `Bearer ${token}`, cookie: 'theme=dark' } });
    expect((await verify(request))?.via).toBe('bearer');
  });

  it.each([
    ['a wrong typ', { typ: 'keyward.refresh' }],
    ['no typ', {}],
    ['a missing sid', { typ: 'keyward.session', sid: undefined }],
    ['a past exp', { typ: 'keyward.session', exp: Math.floor(Date.now() / 1000) - 60 }],
    ['no exp', { typ: 'keyward.session', exp: undefined }],
  ])('refuses a token with %s', async (_label, overrides) => {
    const token = await mintBearer({ ...claims(), exp: exp(), ...overrides });
    expect(await verify(withAuthorization(`Bearer ${token}`))).toBeNull();
  });

  it('refuses a token sealed with another password', async () => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session' }, randomSecret('other'));
    expect(await verify(withAuthorization(`Bearer ${token}`))).toBeNull();
  });

  it('refuses an Auth.js cookie JWT presented as a bearer token', async () => {
    const jwt = await mintCookie(claims());
    expect(await verify(withAuthorization(`Bearer ${jwt}`))).toBeNull();
  });

  it('refuses a tampered token', async () => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session' });
    const i = Math.floor(token.length / 2);
    const tampered = token.slice(0, i) + (token[i] === 'A' ? 'B' : 'A') + token.slice(i + 1);
    expect(await verify(withAuthorization(`Bearer ${tampered}`))).toBeNull();
  });

  it('refuses malformed Authorization headers', async () => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session' });
    for (const header of [
      token,
      `Token ${token}`,
      `Basic ${token}`,
      `Bearer  ${token}`,
      `Bearer ${token} extra`,
      `Bearer ${token},Bearer ${token}`,
      `Bearer "${token}"`,
      'Bearer short',
      'Bearer',
    ]) {
      expect(await verify(withAuthorization(header))).toBeNull();
    }
  });

  it('refuses a bearer token after its exp on the verifier clock', async () => {
    const e = exp();
    const token = await mintBearer({ ...claims(), exp: e, typ: 'keyward.session' });
    const late = createSessionVerifier(secrets, { now: () => e * 1000 });
    expect(await late(withAuthorization(`Bearer ${token}`))).toBeNull();
  });
});

describe('DPoP-bound bearer tokens (RFC 9449; the proofs themselves: tests/unit/dpop, tests/integration/dpop.test.ts)', () => {
  const exp = () => Math.floor(Date.now() / 1000) + 3600;
  const jkt = 'x'.repeat(43);

  /** What the verifier threw: the 401 with its DPoP challenge. */
  async function refusal(run: Promise<unknown>): Promise<KeywardError> {
    const error = await run.then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(KeywardError);
    return error as KeywardError;
  }

  it('a verifier without DPoP refuses a bound token in either scheme (fail closed), never reads it as a session', async () => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session', cnf: { jkt } });
    const asBearer = await refusal(verify(withAuthorization(`Bearer ${token}`)));
    expect(asBearer.status).toBe(401);
    expect(asBearer.headers['www-authenticate']).toMatch(/^DPoP error="invalid_token"/);
    const asDpop = await refusal(verify(withAuthorization(`DPoP ${token}`)));
    expect(asDpop.headers['www-authenticate']).toMatch(/^DPoP error="invalid_token"/);
  });

  it.each([
    ['null', null],
    ['an empty object', {}],
    ['a jkt that is not a thumbprint', { jkt: 'short' }],
  ])('a token whose cnf is %s is no session (not read as unbound)', async (_name, cnf) => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session', cnf });
    expect(await verify(withAuthorization(`Bearer ${token}`))).toBeNull();
  });

  it('an unbound token keeps working as Bearer, and the DPoP scheme refuses it', async () => {
    const token = await mintBearer({ ...claims(), exp: exp(), typ: 'keyward.session' });
    expect(await verify(withAuthorization(`Bearer ${token}`))).toMatchObject({ via: 'bearer' });
    const error = await refusal(verify(withAuthorization(`DPoP ${token}`)));
    expect(error.message).toMatch(/not bound/);
  });
});

describe('no session', () => {
  it('is null without cookie or authorization', async () => {
    expect(await verify(new Request('https://app.example/x'))).toBeNull();
    expect(await verify(withCookie('theme=dark'))).toBeNull();
  });
});

describe("a local user's session follows the users file (KEYWARD_USERS_FILE)", () => {
  function setup() {
    const { users, edit } = editableUsersFile([{ username: 'ada', roles: ['user', 'admin'], claims: { org: 'acme' }, name: 'Ada L.' }]);
    const revocations = new SessionRevocations(new MemoryStore(), 3_600_000);
    const deferred = createSessionVerifier(secrets, { localUsers: users, revocations }).deferred!;
    // Sealed as sign-in seals them: with the password version the file gives now.
    const pwv = () => users.find('ada')!.passwordVersion;
    const adaCookie = () =>
      mintCookie({ sub: 'local:ada', name: 'Ada L.', roles: ['user', 'admin'], claims: { org: 'acme' }, sid: `sid-${randomSecret('s')}`, pwv: pwv() });
    const adaBearer = () =>
      mintBearer({ typ: 'keyward.session', sub: 'local:ada', roles: ['admin'], sid: 'family-1', exp: Math.floor(Date.now() / 1000) + 600, pwv: pwv() });
    return { edit, adaCookie, adaBearer, verify: createSessionVerifier(secrets, { localUsers: users }), deferredVerify: deferred.decode };
  }

  it('a role taken away, a claim or name changed: the next call has the file’s, not the ones sealed at sign-in', async () => {
    const { edit, verify, deferredVerify, adaCookie } = setup();
    const cookie = withCookie(`${SESSION_COOKIE}=${await adaCookie()}`);
    expect(await verify(cookie)).toMatchObject({ userId: 'local:ada', name: 'Ada L.', roles: ['user', 'admin'], claims: { org: 'acme' } });
    edit([{ username: 'ada', roles: ['user'], claims: { org: 'globex' }, name: 'Ada' }]);
    const session = await verify(cookie);
    expect(session).toMatchObject({ userId: 'local:ada', name: 'Ada', roles: ['user'], claims: { org: 'globex' }, via: 'cookie' });
    // The proxy's path (revocation read with its other store reads) decodes the same way.
    expect(await deferredVerify(cookie)).toMatchObject({ roles: ['user'], claims: { org: 'globex' } });
    // Claims without a prototype, as decoded ones are: a claim named like an Object method is not there.
    expect(session!.claims.constructor).toBeUndefined();
  });

  it('a user removed from the file has no session (cookie or bearer)', async () => {
    const { edit, verify, adaCookie, adaBearer } = setup();
    const cookie = withCookie(`${SESSION_COOKIE}=${await adaCookie()}`);
    const bearer = withAuthorization(`Bearer ${await adaBearer()}`);
    expect(await verify(bearer)).toMatchObject({ userId: 'local:ada', roles: ['user', 'admin'], via: 'bearer' });
    edit([{ username: 'bo', roles: ['user'] }]);
    expect(await verify(cookie)).toBeNull();
    expect(await verify(bearer)).toBeNull();
  });

  it('a new password ends every session signed in with the old one; the same name put back with another password revives none', async () => {
    const { edit, verify, deferredVerify, adaCookie, adaBearer } = setup();
    const cookie = withCookie(`${SESSION_COOKIE}=${await adaCookie()}`);
    const bearer = withAuthorization(`Bearer ${await adaBearer()}`);
    expect(await verify(cookie)).toMatchObject({ userId: 'local:ada' });
    // Same roles, claims and name: only the password hash changes.
    edit([{ username: 'ada', roles: ['user', 'admin'], claims: { org: 'acme' }, name: 'Ada L.', password: randomSecret('new-password') }]);
    expect(await verify(cookie)).toBeNull();
    expect(await deferredVerify(cookie)).toBeNull();
    expect(await verify(bearer)).toBeNull();
    // A sign-in with the new password holds.
    expect(await verify(withCookie(`${SESSION_COOKIE}=${await adaCookie()}`))).toMatchObject({ userId: 'local:ada' });

    // Removed, then the name given back (to the same person or another) with another password.
    const before = withCookie(`${SESSION_COOKIE}=${await adaCookie()}`);
    edit([{ username: 'bo', roles: ['user'] }]);
    edit([{ username: 'ada', roles: ['user', 'admin'], claims: { org: 'acme' }, name: 'Ada L.', password: randomSecret('another') }]);
    expect(await verify(before)).toBeNull();
  });

  it('a local session sealed without a password version (before sessions carried one) is no session', async () => {
    const { verify, adaCookie } = setup();
    expect(await verify(withCookie(`${SESSION_COOKIE}=${await adaCookie()}`))).toMatchObject({ userId: 'local:ada' });
    const old = await mintCookie({ sub: 'local:ada', roles: ['user', 'admin'], sid: `sid-${randomSecret('s')}` });
    expect(await verify(withCookie(`${SESSION_COOKIE}=${old}`))).toBeNull();
    const forged = await mintCookie({ sub: 'local:ada', roles: ['user'], sid: `sid-${randomSecret('s')}`, pwv: 'not-the-version' });
    expect(await verify(withCookie(`${SESSION_COOKIE}=${forged}`))).toBeNull();
  });

  it("an identity provider's user keeps the roles and claims of the sign-in (nothing to read them from)", async () => {
    const { edit, verify } = setup();
    edit([{ username: 'oidc', roles: ['user'] }]);
    const token = await mintCookie({ sub: 'oidc:ada', roles: ['user', 'admin'], claims: { org: 'acme' }, sid: `sid-${randomSecret('s')}` });
    expect(await verify(withCookie(`${SESSION_COOKIE}=${token}`))).toMatchObject({ userId: 'oidc:ada', roles: ['user', 'admin'], claims: { org: 'acme' } });
  });
});
