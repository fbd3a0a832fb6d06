import { describe, expect, it } from 'vitest';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import type { KeywardErrorCode } from '../../../lib/core/errors';
import { authorize, sessionScopes } from '../../../lib/core/policy/authorize';
import { sessionFromClaims, type Session } from '../../../lib/core/session/session';
import type { CompiledRoute } from '../../../lib/core/upstream/registry';
import { expectKeywardError, makeUpstream, thrown } from '../support';

type RouteInput = UpstreamInput['routes'][number];

/** One route compiled through the real schema and registry. */
function compiledRoute(route: RouteInput): CompiledRoute {
  const { upstream } = makeUpstream({ routes: [route] });
  return upstream.routes[0]!;
}

function session(roles: string[], claims: Record<string, string> = {}, userId = 'local:alice'): Session {
  const built = sessionFromClaims({ sub: userId, exp: 4_102_444_800, sid: 'sid-1', roles, claims }, 'bearer');
  if (!built) throw new Error('invalid test session');
  return built;
}

/** 'pass', or the refusal's code (checking it is a 403). */
function verdict(route: CompiledRoute, who: Session, params: Record<string, string> = {}): 'pass' | KeywardErrorCode {
  try {
    authorize(route, params, who);
    return 'pass';
  } catch (error) {
    const refusal = expectKeywardError(error, (error as { code: KeywardErrorCode }).code);
    expect(refusal.status).toBe(403);
    return refusal.code;
  }
}

describe('authorize: roles (any one of them)', () => {
  const route = compiledRoute({ method: 'GET', path: '/', roles: ['admin', 'editor'] });

  it('passes a session holding at least one of the roles', () => {
    expect(verdict(route, session(['editor']))).toBe('pass');
    expect(verdict(route, session(['admin']))).toBe('pass');
    expect(verdict(route, session(['user', 'admin', 'editor']))).toBe('pass');
  });

  it('refuses with 403 forbidden otherwise', () => {
    expect(verdict(route, session(['user']))).toBe('forbidden');
    expect(verdict(route, session([]))).toBe('forbidden');
    // Exact, case-sensitive names: no prefix, suffix or case folding.
    expect(verdict(route, session(['Admin']))).toBe('forbidden');
    expect(verdict(route, session(['admins', 'edit']))).toBe('forbidden');
  });

  it('needs only a session when the route declares no roles', () => {
    const open = compiledRoute({ method: 'GET', path: '/' });
    expect(verdict(open, session([]))).toBe('pass');
    expect(verdict(open, session(['anything']))).toBe('pass');
  });
});

describe('authorize: scopes (every one of them)', () => {
  const route = compiledRoute({ method: 'GET', path: '/', scopes: ['chat', 'files:read'] });

  it('reads the space-separated "scope" claim', () => {
    expect([...sessionScopes(session([], { scope: 'chat  files:read ' }))].sort()).toEqual(['chat', 'files:read']);
    expect(sessionScopes(session([])).size).toBe(0);
    expect(sessionScopes(session([], { scope: '' })).size).toBe(0);
  });

  it('passes when every scope is granted, in any order, with extra ones', () => {
    expect(verdict(route, session([], { scope: 'chat files:read' }))).toBe('pass');
    expect(verdict(route, session([], { scope: 'files:read  chat files:write' }))).toBe('pass');
  });

  it('refuses with 403 insufficient_scope when one is missing', () => {
    expect(verdict(route, session([], { scope: 'chat' }))).toBe('insufficient_scope');
    expect(verdict(route, session([], { scope: 'files:read' }))).toBe('insufficient_scope');
    expect(verdict(route, session([]))).toBe('insufficient_scope');
    expect(verdict(route, session([], { scope: '' }))).toBe('insufficient_scope');
    // Whole tokens only: no prefix match, no case folding, no other separators.
    expect(verdict(route, session([], { scope: 'chat files:reader' }))).toBe('insufficient_scope');
    expect(verdict(route, session([], { scope: 'CHAT files:read' }))).toBe('insufficient_scope');
    expect(verdict(route, session([], { scope: 'chat,files:read' }))).toBe('insufficient_scope');
    expect(verdict(route, session([], { scope: 'chat files' }))).toBe('insufficient_scope');
  });

  it('checks roles as well: a session with the scopes but none of the roles is refused', () => {
    const both = compiledRoute({ method: 'GET', path: '/', roles: ['pro'], scopes: ['chat'] });
    expect(verdict(both, session(['pro'], { scope: 'chat' }))).toBe('pass');
    expect(verdict(both, session(['user'], { scope: 'chat' }))).toBe('forbidden');
    expect(verdict(both, session(['pro'], { scope: 'files' }))).toBe('insufficient_scope');
  });
});

describe('authorize: paramEquals (object-level checks)', () => {
  it('compares a path parameter with the user id', () => {
    const route = compiledRoute({ method: 'GET', path: '/users/:id/files', paramEquals: { id: 'userId' } });
    const alice = session(['user'], {}, 'alice');
    expect(verdict(route, alice, { id: 'alice' })).toBe('pass');
    expect(verdict(route, alice, { id: 'bob' })).toBe('not_owner');
    expect(verdict(route, alice, { id: 'Alice' })).toBe('not_owner');
    expect(verdict(route, alice, { id: 'alice ' })).toBe('not_owner');
    expect(verdict(route, alice, { id: '' })).toBe('not_owner');
  });

  it('compares a path parameter with a claim', () => {
    const route = compiledRoute({
      method: 'GET',
      path: '/accounts/:account',
      paramEquals: { account: 'claims.accountId' },
    });
    const who = session(['user'], { accountId: 'acct-42' });
    expect(verdict(route, who, { account: 'acct-42' })).toBe('pass');
    expect(verdict(route, who, { account: 'acct-43' })).toBe('not_owner');
    // The user id is not the claim.
    expect(verdict(route, session(['user'], {}, 'acct-42'), { account: 'acct-42' })).toBe('forbidden');
  });

  it('refuses with 403 forbidden when the session lacks the claim (never "not owner", never a pass)', () => {
    const route = compiledRoute({ method: 'GET', path: '/orgs/:org', paramEquals: { org: 'claims.org' } });
    expect(verdict(route, session(['user']), { org: 'acme' })).toBe('forbidden');
    expect(verdict(route, session(['user'], { Org: 'acme' }), { org: 'acme' })).toBe('forbidden');
    const proto = compiledRoute({ method: 'GET', path: '/x/:p', paramEquals: { p: 'claims.constructor' } });
    expect(verdict(proto, session(['user']), { p: 'function Object() { [native code] }' })).toBe('forbidden');
  });

  it('needs every parameter check to hold', () => {
    const route = compiledRoute({
      method: 'GET',
      path: '/orgs/:org/users/:user',
      paramEquals: { org: 'claims.org', user: 'userId' },
    });
    const who = session(['user'], { org: 'acme' }, 'alice');
    expect(verdict(route, who, { org: 'acme', user: 'alice' })).toBe('pass');
    expect(verdict(route, who, { org: 'acme', user: 'bob' })).toBe('not_owner');
    expect(verdict(route, who, { org: 'globex', user: 'alice' })).toBe('not_owner');
  });

  it('comes after roles and scopes', () => {
    const route = compiledRoute({
      method: 'GET',
      path: '/users/:id',
      roles: ['user'],
      scopes: ['read'],
      paramEquals: { id: 'userId' },
    });
    expect(verdict(route, session(['guest'], { scope: 'read' }, 'alice'), { id: 'bob' })).toBe('forbidden');
    expect(verdict(route, session(['user'], {}, 'alice'), { id: 'bob' })).toBe('insufficient_scope');
    expect(verdict(route, session(['user'], { scope: 'read' }, 'alice'), { id: 'bob' })).toBe('not_owner');
    expect(verdict(route, session(['user'], { scope: 'read' }, 'alice'), { id: 'alice' })).toBe('pass');
  });

  it('throws a KeywardError whose message names no value', () => {
    const route = compiledRoute({ method: 'GET', path: '/users/:id', paramEquals: { id: 'userId' } });
    const error = expectKeywardError(
      thrown(() => authorize(route, { id: 'bob-secret-id' }, session(['user'], {}, 'alice'))),
      'not_owner',
    );
    expect(error.message).not.toContain('bob-secret-id');
    expect(error.message).not.toContain('alice');
  });
});
