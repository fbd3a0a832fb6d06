import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import { KeywardError } from '../../../lib/core/errors';
import { buildUpstreamUrl } from '../../../lib/core/forward/url';
import { assertSafeSegments } from '../../../lib/core/route/segments';
import { buildRegistry, type Upstream } from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { expectKeywardError, makeUpstream, thrown } from '../support';

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

interface BaseSpec {
  scheme: 'http' | 'https';
  host: string;
  loopback: boolean;
  port: number | null;
  pathSegments: string[];
  trailingSlash: boolean;
}

const loopbackHost = fc.oneof(
  fc.constantFrom('127.0.0.1', 'localhost', '[::1]'),
  fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255)).map(([a, b, c]) => `127.${a}.${b}.${c}`),
);
// "xn--" labels must be valid punycode, which fc.domain() does not promise: leave them out.
const dnsHost = fc.oneof(
  fc.domain().filter((host) => !host.includes('xn--')),
  fc.constantFrom('api.example.com', 'upstream.internal.example.org'),
);

const baseSpec: fc.Arbitrary<BaseSpec> = fc.record({
  scheme: fc.constantFrom('http' as const, 'https' as const),
  hostChoice: fc.oneof(
    loopbackHost.map((host) => ({ host, loopback: true })),
    dnsHost.map((host) => ({ host, loopback: false })),
  ),
  port: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: null }),
  pathSegments: fc.array(fc.stringMatching(/^[a-z0-9_~-]{1,8}$/), { maxLength: 3 }),
  trailingSlash: fc.boolean(),
}).map(({ hostChoice, ...rest }) => ({ ...rest, ...hostChoice }));

function baseUrlOf(spec: BaseSpec): string {
  const port = spec.port === null ? '' : `:${spec.port}`;
  const path = spec.pathSegments.length ? `/${spec.pathSegments.join('/')}` : '';
  return `${spec.scheme}://${spec.host}${port}${path}${spec.trailingSlash ? '/' : ''}`;
}

/** The origin the base URL names, worked out from its parts (default ports are not written). */
function expectedOrigin(spec: BaseSpec): string {
  const defaultPort = spec.scheme === 'https' ? 443 : 80;
  const port = spec.port === null || spec.port === defaultPort ? '' : `:${spec.port}`;
  return `${spec.scheme}://${spec.host}${port}`;
}

/** Keyward stores the base with a trailing slash; every request path lives under it. */
function expectedBasePath(spec: BaseSpec): string {
  return spec.pathSegments.length ? `/${spec.pathSegments.join('/')}/` : '/';
}

const upstreamCache = new Map<string, Upstream>();
function upstreamFor(spec: BaseSpec): Upstream {
  const baseUrl = baseUrlOf(spec);
  let upstream = upstreamCache.get(baseUrl);
  if (!upstream) {
    const definition = defineUpstream('u', {
      baseUrl,
      allowInsecureHttp: spec.scheme === 'http' && !spec.loopback,
      auth: { type: 'bearer', secret: { env: 'K' } },
      routes: [{ method: 'GET', path: '/*' }],
    });
    upstream = buildRegistry([definition], { K: randomSecret() }).get('u')!;
    upstreamCache.set(baseUrl, upstream);
  }
  return upstream;
}

/** Strings that have broken path handling somewhere at some point. */
const ADVERSARIAL = [
  '..',
  '.',
  '/',
  '\\',
  '%2f',
  '%2F',
  '%5c',
  '%2e%2e',
  '%00',
  '?',
  '#',
  '@',
  ':',
  '\uFF0E',
  '\uFF0E\uFF0E',
  '\u2024',
  '\u2024\u2024',
  '\u0000',
  '\r\n',
  '\t',
  '\x7f',
  '\u0085',
  '',
  ' ',
  '//evil.com',
  'https://evil.com',
  'https:%2F%2Fevil.com',
  '\\\\evil.com',
  'user@evil.com',
  'a/../b',
  '..%2f..%2fadmin',
  'a?b=1',
  'x#y',
  'caf\u00e9',
  '\u0430dmin', // Cyrillic a
  'a'.repeat(513),
];

/** Look suspicious but are plain unreserved characters: must pass and stay literal. */
const TRICKY_BUT_SAFE = ['...', '.a', 'a.', '..a', '~', '~root', '-', '_'];

/** Characters RFC 3986 §2.3 calls unreserved: always safe in a segment. */
const UNRESERVED = /^[A-Za-z0-9._~-]+$/;
const safeSegment = fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=-]{1,12}$/);
const segment = fc.oneof(
  { weight: 6, arbitrary: safeSegment },
  { weight: 3, arbitrary: fc.constantFrom(...ADVERSARIAL) },
  { weight: 1, arbitrary: fc.constantFrom(...TRICKY_BUT_SAFE) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 10 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 10 }) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(safeSegment, fc.constantFrom(...ADVERSARIAL), safeSegment)
      .map(([a, b, c]) => `${a}${b}${c}`),
  },
);
const segments = fc.oneof(
  { weight: 20, arbitrary: fc.array(segment, { maxLength: 8 }) },
  { weight: 1, arbitrary: fc.array(safeSegment, { minLength: 60, maxLength: 70 }) },
);

// ---------------------------------------------------------------------------------------------
// Independent statement of the segment rules (DESIGN.md, "The request's path", step 2)
// ---------------------------------------------------------------------------------------------

/** True when the design says the segment list must be refused, whatever the implementation's regex. */
function mustRefuse(list: readonly string[]): boolean {
  if (list.length > 64) return true;
  return list.some(
    (s) =>
      s === '' ||
      s === '.' ||
      s === '..' ||
      s.length > 512 ||
      /[/\\:?#%@]/.test(s) ||
      // control bytes and anything outside printable ASCII (fullwidth dots, homoglyphs, …)
      /[^\x21-\x7e]/.test(s),
  );
}

/** True when the segment list only uses unreserved characters and must therefore be accepted. */
function mustAccept(list: readonly string[]): boolean {
  return list.length <= 64 && list.every((s) => UNRESERVED.test(s) && s !== '.' && s !== '..' && s.length <= 512);
}

function tryAssertSafe(list: readonly string[]): 'accepted' | KeywardError {
  try {
    assertSafeSegments(list);
    return 'accepted';
  } catch (error) {
    if (error instanceof KeywardError) return error;
    throw error;
  }
}

function segmentsAfterBase(url: URL, basePath: string): string[] {
  const rest = url.pathname.slice(basePath.length);
  return rest === '' ? [] : rest.split('/').map((part) => decodeURIComponent(part));
}

// ---------------------------------------------------------------------------------------------

describe('buildUpstreamUrl (property)', () => {
  it('keeps origin and base path, has no query or fragment, and round-trips the accepted segments', () => {
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(baseSpec, segments, (spec, list) => {
        const upstream = upstreamFor(spec);
        const origin = expectedOrigin(spec);
        const basePath = expectedBasePath(spec);
        // The registry must agree with the base URL it was given.
        expect(upstream.origin).toBe(origin);
        expect(upstream.basePath).toBe(basePath);

        const verdict = tryAssertSafe(list);
        if (mustRefuse(list)) expect(verdict).not.toBe('accepted');
        if (mustAccept(list)) expect(verdict).toBe('accepted');

        if (verdict === 'accepted') {
          accepted++;
          const url = buildUpstreamUrl(upstream, list);
          expect(url.origin).toBe(origin);
          expect(url.pathname.startsWith(basePath)).toBe(true);
          expect(url.search).toBe('');
          expect(url.hash).toBe('');
          expect(url.username).toBe('');
          expect(url.password).toBe('');
          expect(segmentsAfterBase(url, basePath)).toEqual(list);
        } else {
          refused++;
          expect(verdict.code).toBe('bad_path');
          expect(verdict.status).toBe(400);
          // Defence in depth: even if segment validation were skipped, the URL builder must either
          // refuse or stay on the base origin and under the base path.
          let url: URL | null = null;
          try {
            url = buildUpstreamUrl(upstream, list);
          } catch (error) {
            expectKeywardError(error, 'bad_path');
          }
          if (url) {
            expect(url.origin).toBe(origin);
            expect(url.pathname.startsWith(basePath)).toBe(true);
            expect(url.search).toBe('');
            expect(url.hash).toBe('');
          }
        }
      }),
      { numRuns: 10_000 },
    );
    // The generator must exercise both sides of the property, or the property says little.
    expect(accepted).toBeGreaterThan(1000);
    expect(refused).toBeGreaterThan(1000);
  });
});

describe('buildUpstreamUrl (examples)', () => {
  const { upstream } = makeUpstream({ baseUrl: 'https://api.example.com/v1/' });

  it.each(ADVERSARIAL.map((value) => [JSON.stringify(value), value] as const))(
    'segment %s is refused by segment validation',
    (_label, value) => {
      expectKeywardError(thrown(() => assertSafeSegments(['items', value])), 'bad_path');
    },
  );

  it.each(ADVERSARIAL.map((value) => [JSON.stringify(value), value] as const))(
    'segment %s cannot move the URL off the base even without validation',
    (_label, value) => {
      let url: URL;
      try {
        url = buildUpstreamUrl(upstream, ['items', value]);
      } catch (error) {
        expectKeywardError(error, 'bad_path');
        return;
      }
      expect(url.origin).toBe('https://api.example.com');
      expect(url.pathname.startsWith('/v1/items/')).toBe(true);
      expect(url.search).toBe('');
      expect(url.hash).toBe('');
    },
  );

  it.each([[['..']], [['a', '..']], [['..', 'admin']], [['.']], [['a', '.', 'b']]])(
    'dot segments %j are refused by the URL builder itself (no silent normalisation)',
    (list) => {
      expectKeywardError(
        thrown(() => buildUpstreamUrl(upstream, list)),
        'bad_path',
      );
    },
  );

  it.each(TRICKY_BUT_SAFE.map((value) => [value]))('segment %j is accepted and kept literally', (value) => {
    expect(() => assertSafeSegments([value])).not.toThrow();
    expect(buildUpstreamUrl(upstream, ['items', value]).pathname).toBe(`/v1/items/${value}`);
  });

  it('encodes a scheme-relative or absolute URL segment instead of following it', () => {
    expect(buildUpstreamUrl(upstream, ['//evil.com']).href).toBe('https://api.example.com/v1/%2F%2Fevil.com');
    expect(buildUpstreamUrl(upstream, ['https://evil.com']).href).toBe(
      'https://api.example.com/v1/https%3A%2F%2Fevil.com',
    );
    expect(buildUpstreamUrl(upstream, ['a?b#c']).href).toBe('https://api.example.com/v1/a%3Fb%23c');
  });

  it('appends plain segments under the base path', () => {
    expect(buildUpstreamUrl(upstream, []).href).toBe('https://api.example.com/v1/');
    expect(buildUpstreamUrl(upstream, ['items', '42']).href).toBe('https://api.example.com/v1/items/42');
    expect(buildUpstreamUrl(upstream, ["a!$&'()*+,;=b"]).pathname).toBe("/v1/a!%24%26'()*%2B%2C%3B%3Db");
  });

  it('never carries the base query or fragment (the schema refuses them, the builder clears them)', () => {
    const tampered = { ...upstream, base: new URL('https://api.example.com/v1/?k=1#f') };
    const url = buildUpstreamUrl(tampered, ['x']);
    expect(url.search).toBe('');
    expect(url.hash).toBe('');
  });

  it('refuses more than 64 segments and a segment longer than 512 characters', () => {
    expect(() => assertSafeSegments(Array.from({ length: 64 }, () => 'a'))).not.toThrow();
    expectKeywardError(
      thrown(() => assertSafeSegments(Array.from({ length: 65 }, () => 'a'))),
      'bad_path',
    );
    expect(() => assertSafeSegments(['a'.repeat(512)])).not.toThrow();
    expectKeywardError(
      thrown(() => assertSafeSegments(['a'.repeat(513)])),
      'bad_path',
    );
  });
});
