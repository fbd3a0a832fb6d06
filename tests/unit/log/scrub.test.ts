import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { REDACTED, SecretScrubber, secretForms } from '../../../lib/core/log/scrub';
import { randomSecret } from '../../fixtures/secrets';
import {
  MARKER_TEXT,
  REGEX_SPECIAL_SECRET,
  expectedForms,
  overlapsMarker,
  referenceScrubText,
  textFormsNest,
} from '../scrub-oracle';

const secretArb = fc.oneof(
  fc.constant(randomSecret()),
  fc.constant(REGEX_SPECIAL_SECRET),
  fc.string({ unit: fc.constantFrom(...'.*+?^${}()|[]\\"/%=&:;@ \'!~-_'), minLength: 8, maxLength: 20 }),
  fc.string({ unit: 'binary', minLength: 8, maxLength: 20 }),
);

function textWith(secrets: string[]): fc.Arbitrary<string> {
  const forms = secrets.flatMap(expectedForms);
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

describe('secretForms', () => {
  it('uses the marker [REDACTED]', () => {
    expect(REDACTED).toBe(MARKER_TEXT);
  });

  it.each([['random', randomSecret()], ['regex-special', REGEX_SPECIAL_SECRET], ['quotes', `"q"\\${randomSecret()}`]])(
    'lists raw, URL-encoded, JSON-escaped and base64 forms (%s secret)',
    (_label, secret) => {
      const forms = secretForms(secret);
      for (const form of expectedForms(secret)) expect(forms).toContain(form);
      for (const form of forms) expect(form.length).toBeGreaterThanOrEqual(4);
    },
  );
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
          const forms = secrets.flatMap(expectedForms);
          if (!overlapsMarker(forms)) for (const form of forms) expect(out).not.toContain(form);
          if (!textFormsNest(secrets)) expect(out).toBe(referenceScrubText(text, secrets));
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
        fc.pre(!expectedForms(secret).some((f) => text.includes(f)));
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
