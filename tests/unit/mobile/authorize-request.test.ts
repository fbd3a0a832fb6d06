import { describe, expect, it } from 'vitest';
import {
  callbackLocation,
  readAuthorizeClient,
  readAuthorizeRequest,
} from '../../../lib/core/mobile/authorize-request';
import { OAuthError } from '../../../lib/core/mobile/oauth-error';

const APP = 'com.example.app:/cb';
const CHALLENGE = 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM';
const registered = (uri: string) => uri === APP;

function query(extra: Record<string, string> = {}, omit: string[] = []): URLSearchParams {
  const params = new URLSearchParams({
    redirect_uri: APP,
    code_challenge: CHALLENGE,
    code_challenge_method: 'S256',
    state: 's',
    ...extra,
  });
  for (const name of omit) params.delete(name);
  return params;
}

function thrown(run: () => unknown): OAuthError {
  try {
    run();
  } catch (error) {
    if (error instanceof OAuthError) return error;
    throw error;
  }
  throw new Error('nothing was thrown');
}

describe('readAuthorizeClient (errors here are never redirected)', () => {
  it('reads redirect_uri, state and client_id', () => {
    expect(readAuthorizeClient(query({ client_id: 'app-1' }), registered)).toEqual({
      redirectUri: APP,
      state: 's',
      clientId: 'app-1',
    });
    expect(readAuthorizeClient(query({}, ['state']), registered)).toEqual({
      redirectUri: APP,
      state: null,
      clientId: null,
    });
  });

  it.each([
    ['missing', query({}, ['redirect_uri'])],
    ['empty', query({ redirect_uri: '' })],
    ['unregistered', query({ redirect_uri: 'https://evil.example/cb' })],
    ['twice', new URLSearchParams(`${query()}&redirect_uri=${encodeURIComponent(APP)}`)],
    ['client_id twice', new URLSearchParams(`${query()}&client_id=a&client_id=b`)],
    ['client_id not printable ASCII', query({ client_id: 'café' })],
  ])('redirect_uri or client_id %s → invalid_request', (_name, params) => {
    const error = thrown(() => readAuthorizeClient(params, registered));
    expect(error.error).toBe('invalid_request');
    expect(error.description).not.toContain('evil.example');
  });

  it('a repeated state is not sent back (it cannot be sent back as it was)', () => {
    expect(readAuthorizeClient(new URLSearchParams(`${query()}&state=t`), registered).state).toBeNull();
  });
});

describe('readAuthorizeRequest (errors here go back to the app)', () => {
  const client = { redirectUri: APP, state: 's', clientId: null };

  it('accepts response_type=code or none at all', () => {
    expect(readAuthorizeRequest(query({ response_type: 'code' }), client).challenge).toBe(CHALLENGE);
    expect(readAuthorizeRequest(query(), client).challenge).toBe(CHALLENGE);
  });

  it.each([
    ['response_type=token', query({ response_type: 'token' }), 'unsupported_response_type'],
    ['no challenge', query({}, ['code_challenge']), 'invalid_request'],
    ['plain', query({ code_challenge_method: 'plain' }), 'invalid_request'],
    ['a parameter twice', new URLSearchParams(`${query()}&code_challenge=${CHALLENGE}`), 'invalid_request'],
  ])('%s → %s', (_name, params, error) => {
    expect(thrown(() => readAuthorizeRequest(params, client)).error).toBe(error);
  });
});

describe('callbackLocation', () => {
  it('adds the fields, state and iss to the registered URI', () => {
    const location = new URL(
      callbackLocation(
        { redirectUri: 'https://app.example/cb?x=1', state: 'a&b', clientId: null },
        { code: 'c' },
        'https://kw.example',
      ),
    );
    expect([...location.searchParams]).toEqual([
      ['x', '1'],
      ['code', 'c'],
      ['state', 'a&b'],
      ['iss', 'https://kw.example'],
    ]);
    expect(
      new URL(callbackLocation({ redirectUri: APP, state: null, clientId: null }, { error: 'invalid_request' }, null))
        .search,
    ).toBe('?error=invalid_request');
  });
});
