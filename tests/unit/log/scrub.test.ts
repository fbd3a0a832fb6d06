import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { REDACTED, SecretScrubber, formsOfSecrets, namedSecretForms, secretForms } from '../../../lib/core/log/scrub';
import { randomSecret } from '../../fixtures/secrets';
import {
  EVERY_FORM_SECRET,
  MARKER_TEXT,
  REGEX_SPECIAL_SECRET,
  expectedForms,
  expectedLogForms,
  expectedNamedForms,
  overlapsMarker,
  referenceScrubText,
  stableBase64,
} from '../scrub-oracle';

const RUN_SECRET = randomSecret();

const secretArb = fc.oneof(
  fc.constant(randomSecret()),
  fc.constant(EVERY_FORM_SECRET),
  fc.constant(REGEX_SPECIAL_SECRET),
  fc.string({ unit: fc.constantFrom(...'.*+?^${}()|[]\\"/%=&:;@ \'!~-_'), minLength: 8, maxLength: 20 }),
  fc.string({ unit: 'binary', minLength: 8, maxLength: 20 }),
);

function textWith(secrets: string[]): fc.Arbitrary<string> {
  const forms = secrets.flatMap(expectedLogForms);
  return fc
    .array(
      fc.oneof(
        { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
        { weight: 2, arbitrary: fc.constantFrom(...forms) },
        { weight: 1, arbitrary: fc.constantFrom(...forms).map((f) => f.slice(0, -1)) },
        { weight: 1, arbitrary: fc.constantFrom('\n', '"', '\\', '%', '=', '$&', '$1') },
      ),
      { maxLength: 12 },
    )
    .map((parts) => parts.join(''));
}

/** The same characters in the URL-safe alphabet (RFC 4648 §5). */
function toBase64url(base64: string): string {
  return base64.replace(/\+/g, '-').replace(/\//g, '_');
}

describe('secretForms', () => {
  it('uses the marker [REDACTED]', () => {
    expect(REDACTED).toBe(MARKER_TEXT);
  });

  it.each([
    ['random', randomSecret()],
    ['every form distinct', EVERY_FORM_SECRET],
    ['regex-special', REGEX_SPECIAL_SECRET],
    ['quotes', `"q"\\${randomSecret()}`],
  ])('lists exactly the forms of the test oracle (%s secret)', (_label, secret) => {
    expect(new Set(secretForms(secret))).toEqual(new Set(expectedForms(secret)));
    for (const form of secretForms(secret)) expect(form.length).toBeGreaterThanOrEqual(4);
  });

  it('lists exactly the forms of the test oracle, for any secret', () => {
    fc.assert(
      fc.property(secretArb, (secret) => {
        expect(new Set(secretForms(secret))).toEqual(new Set(expectedForms(secret)));
      }),
      { numRuns: 500 },
    );
  });

  it('names each form once, never by its value', () => {
    const named = namedSecretForms(EVERY_FORM_SECRET);
    expect(named.size).toBe(expectedNamedForms(EVERY_FORM_SECRET).length);
    expect(new Set(named.values()).size).toBe(named.size);
    for (const name of named.values()) expect(name).toMatch(/^[a-z0-9-]+$/);
  });

  it.each([0, 1, 2])('lists the base64 characters that only the key decides, %i bytes past a 3-byte boundary', (offset) => {
    const secret = randomSecret();
    const stable = stableBase64(secret, offset);
    expect(secretForms(secret)).toContain(stable);
    // Whatever surrounds it, the key's encoding at that alignment holds these characters.
    for (const [before, after] of [[0x00, 0x00], [0xff, 0xff], [0x5a, 0xa5]]) {
      const blob = Buffer.concat([Buffer.alloc(3 + offset, before!), Buffer.from(secret), Buffer.alloc(2, after!)]);
      expect(blob.toString('base64')).toContain(stable);
      expect(blob.toString('base64url')).toContain(toBase64url(stable));
    }
  });

  it('drops base64 fragments shorter than 8 characters (too short to be specific), keeps whole forms of 4 and up', () => {
    const forms = secretForms('abcde');
    expect(forms).toContain('abcde');
    expect(forms).toContain('YWJjZGU=');
    expect(forms).toContain('6162636465');
    expect(forms.filter((form) => form.length < 8)).toEqual(['abcde', 'ABCDE', 'YWJjZGU']);
  });

  it('a case-insensitive key echoed in the other case, or with every byte percent-encoded, is a form of it', () => {
    // A UUID key works in either case; SQL Server's uniqueidentifier comes back uppercase.
    const key = '3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f';
    const scrubber = new SecretScrubber();
    scrubber.add([key]);
    for (const echoed of [
      key.toUpperCase(),
      [...Buffer.from(key)].map((byte) => `%${byte.toString(16).toUpperCase()}`).join(''),
      [...Buffer.from(key)].map((byte) => `%${byte.toString(16)}`).join(''),
    ]) {
      expect(scrubber.scrub(`id=${echoed};`)).toBe(`id=${REDACTED};`);
    }
    expect(namedSecretForms('AbC-123-dEf').get('ABC-123-DEF')).toBe('uppercase');
    expect(namedSecretForms('AbC-123-dEf').get('abc-123-def')).toBe('lowercase');
  });

  it('another secret in another case is ordinary text, left alone (a password `Production` must not eat "production")', () => {
    const scrubber = new SecretScrubber();
    scrubber.add(['Production-9', 'CONTENT-TYPE']);
    expect(scrubber.scrub('production-9 content-type Production-9')).toBe(`production-9 content-type ${REDACTED}`);
  });
});

describe('SecretScrubber (property)', () => {
  it('removes every form and otherwise equals the whole-string replacement', () => {
    fc.assert(
      fc.property(
        fc.array(secretArb, { minLength: 1, maxLength: 3 }).chain((secrets) => fc.tuple(fc.constant(secrets), textWith(secrets))),
        ([secrets, text]) => {
          const scrubber = new SecretScrubber();
          scrubber.add(secrets);
          const out = scrubber.scrub(text);
          const forms = secrets.flatMap(expectedLogForms);
          if (!overlapsMarker(forms)) for (const form of forms) expect(out).not.toContain(form);
          expect(out).toBe(referenceScrubText(text, secrets));
        },
      ),
      { numRuns: 2_000 },
    );
  });

  it('leaves text without secrets unchanged', () => {
    const secret = randomSecret();
    const scrubber = new SecretScrubber();
    scrubber.add([secret]);
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (text) => {
        fc.pre(!expectedLogForms(secret).some((f) => text.includes(f)));
        expect(scrubber.scrub(text)).toBe(text);
      }),
      { numRuns: 1_000 },
    );
  });
});

describe('SecretScrubber (examples)', () => {
  it('is the identity before any secret is added', () => {
    expect(new SecretScrubber().scrub('a $& b')).toBe('a $& b');
  });

  it('matches a regex-special secret literally', () => {
    const scrubber = new SecretScrubber();
    scrubber.add([REGEX_SPECIAL_SECRET]);
    expect(scrubber.scrub(`<${REGEX_SPECIAL_SECRET}>`)).toBe(`<${MARKER_TEXT}>`);
    const lookalike = REGEX_SPECIAL_SECRET.replace('.', 'X');
    expect(scrubber.scrub(lookalike)).toBe(lookalike);
    expect(scrubber.scrub('abbbbc')).toBe('abbbbc');
  });

  it('does not expand $ patterns from the text', () => {
    const secret = randomSecret();
    const scrubber = new SecretScrubber();
    scrubber.add([secret]);
    expect(scrubber.scrub(`$& ${secret} $1`)).toBe(`$& ${MARKER_TEXT} $1`);
  });

  it('keeps earlier secrets when more are added', () => {
    const [a, b] = [randomSecret(), randomSecret()];
    const scrubber = new SecretScrubber();
    scrubber.add([a]);
    scrubber.add([b]);
    expect(scrubber.scrub(`${a} ${b}`)).toBe(`${MARKER_TEXT} ${MARKER_TEXT}`);
  });

  it.each([
    ...expectedNamedForms(EVERY_FORM_SECRET).map(([name, form]) => [name, EVERY_FORM_SECRET, form]),
    ...expectedNamedForms(RUN_SECRET).map(([name, form]) => [`${name}, random key`, RUN_SECRET, form]),
  ])('replaces the form "%s", and the form as a JSON log line writes it', (_name, secret, form) => {
    const scrubber = new SecretScrubber();
    scrubber.add([secret]);
    expect(scrubber.scrub(`x ${form} y`)).toBe(`x ${MARKER_TEXT} y`);
    expect(scrubber.scrub(JSON.stringify({ msg: `x ${form} y` }))).toBe(`{"msg":"x ${MARKER_TEXT} y"}`);
  });

  it.each([0, 1, 2])('replaces the key base64-encoded inside a larger blob, %i bytes past a 3-byte boundary', (offset) => {
    const scrubber = new SecretScrubber();
    scrubber.add([RUN_SECRET]);
    for (let after = 0; after <= 4; after++) {
      const blob = Buffer.concat([Buffer.alloc(6 + offset, 0xa5), Buffer.from(RUN_SECRET), Buffer.alloc(after, 0x5a)]);
      for (const encoding of ['base64', 'base64url'] as const) {
        const out = scrubber.scrub(`body=${blob.toString(encoding)}`);
        expect(out).toContain(MARKER_TEXT);
        for (const form of expectedForms(RUN_SECRET)) expect(out).not.toContain(form);
      }
    }
  });

  it('replaces a padded base64 form whole', () => {
    const secret = randomSecret().slice(0, 26);
    const scrubber = new SecretScrubber();
    scrubber.add([secret]);
    expect(scrubber.scrub(`x${Buffer.from(secret).toString('base64')}y`)).toBe(`x${MARKER_TEXT}y`);
  });

  // Regression test (fixed bug in lib/core/log/scrub.ts, secretForms): URLSearchParams (used by injectCredential for `query`
  // credentials) percent-encodes ( ) ! ' ~ and writes space as "+", unlike encodeURIComponent, so that
  // URL-encoded form of the secret is not scrubbed.
  it('replaces a secret as URLSearchParams serialises it', () => {
    const secret = `${randomSecret()}(x)!`;
    const scrubber = new SecretScrubber();
    scrubber.add([secret]);
    const url = new URL('https://api.example.com/v1/items');
    url.searchParams.set('key', secret);
    expect(scrubber.scrub(url.href)).toBe(`https://api.example.com/v1/items?key=${MARKER_TEXT}`);
  });
});

describe('formsOfSecrets', () => {
  it('answers the same list object from its cache, and a list changed in place with its new values', () => {
    const first = randomSecret('forms');
    const second = randomSecret('forms');
    const list = [first];
    const forms = formsOfSecrets(list);
    expect(forms).toContain(first);
    expect(formsOfSecrets(list)).toBe(forms); // found by identity: the same array of forms
    expect(formsOfSecrets([first])).toEqual(forms); // another list with the same values: the same forms
    list.push(second);
    expect(formsOfSecrets(list)).toContain(second);
    list[1] = first;
    expect(formsOfSecrets(list)).not.toContain(second);
  });
});
