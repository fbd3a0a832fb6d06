import { describe, expect, it } from 'vitest';
import { emailDomainRefusal } from '../../../lib/core/session/email-domain';

/** KEYWARD_OIDC_EMAIL_DOMAINS: who may sign in with OIDC, read from the ID token's claims. */
describe('emailDomainRefusal', () => {
  const domains = ['example.com', 'corp.example.org', 'korp.com'];

  it('lets any account in when no domain is listed', () => {
    expect(emailDomainRefusal({}, [])).toBeNull();
    expect(emailDomainRefusal(undefined, [])).toBeNull();
  });

  it('lets in a verified email at a listed domain, in any letter case', () => {
    expect(emailDomainRefusal({ email: 'ada@example.com', email_verified: true }, domains)).toBeNull();
    expect(emailDomainRefusal({ email: 'Ada@CORP.Example.org', email_verified: true }, domains)).toBeNull();
  });

  it.each<[string, Record<string, unknown>, string]>([
    ['no email', { email_verified: true }, 'has no email'],
    ['an email that is not a string', { email: ['ada@example.com'], email_verified: true }, 'has no email'],
    ['another domain', { email: 'ada@example.net', email_verified: true }, '(example.net) is not listed'],
    ['a subdomain of a listed one', { email: 'ada@eu.example.com', email_verified: true }, '(eu.example.com) is not listed'],
    ['a lookalike ending', { email: 'ada@evilexample.com', email_verified: true }, 'is not listed'],
    ['the domain before the last "@"', { email: 'ada@example.com@evil.test', email_verified: true }, '(evil.test) is not listed'],
    ['a trailing dot', { email: 'ada@example.com.', email_verified: true }, 'is not listed'],
    ['no "@"', { email: 'example.com', email_verified: true }, "domain is not listed"],
    // U+212A (Kelvin sign) lower-cases to an ASCII "k": "\u212Aorp.com" would otherwise equal "korp.com".
    ['a domain not in ASCII that lower-cases to a listed one', { email: 'eve@\u212Aorp.com', email_verified: true }, 'domain is not listed'],
    ['an unverified email', { email: 'ada@example.com', email_verified: false }, 'not verified'],
    ['no email_verified claim', { email: 'ada@example.com' }, 'not verified'],
    ['email_verified as a string', { email: 'ada@example.com', email_verified: 'true' }, 'not verified'],
  ])('refuses %s', (_case, claims, reason) => {
    expect(emailDomainRefusal(claims, domains)).toContain(reason);
  });

  it('never puts the address itself in the reason', () => {
    expect(emailDomainRefusal({ email: 'ada.private@example.net', email_verified: true }, domains)).not.toContain('ada.private');
  });
});
