/**
 * Whether an OIDC account may sign in under `KEYWARD_OIDC_EMAIL_DOMAINS`: its ID token must name an email whose
 * domain (after the last "@", without regard to case) is one of `domains`, and say it is verified
 * (`email_verified: true`; an unverified address is whatever the user typed at sign-up). No domains: any account.
 * Returns null when allowed, else why not (for the log: the domain at most, never the address).
 */
export function emailDomainRefusal(claims: Readonly<Record<string, unknown>> | null | undefined, domains: readonly string[]): string | null {
  if (domains.length === 0) return null;
  const email = claims?.email;
  if (typeof email !== 'string') return 'the ID token has no email';
  const at = email.lastIndexOf('@');
  // Compared in ASCII only: toLowerCase() maps a few other characters to ASCII letters (the Kelvin sign K to "k"),
  // so a domain not written in ASCII (a punycode one is) never matches.
  const domain = at > 0 && /^[\x21-\x7e]+$/.test(email.slice(at + 1)) ? email.slice(at + 1).toLowerCase() : '';
  if (!domains.includes(domain)) return `the email's domain${domain ? ` (${domain.slice(0, 253)})` : ''} is not listed`;
  if (claims?.email_verified !== true) return 'the email is not verified';
  return null;
}
