import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import { KeywardError } from '../../../lib/core/errors';
import { buildUpstreamUrl } from '../../../lib/core/forward/url';
import { assertSafeSegments, isSafeSegment } from '../../../lib/core/route/segments';
import { captureParam, compileTemplate, type TemplateSegment } from '../../../lib/core/route/template';
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

/** Segments with ":" (RFC 3986 §3.3 pchar), hostile and not. */
const COLON_SEGMENTS = [
  'gemini-2.0-flash:generateContent',
  'anthropic.claude-3-5-sonnet-20240620-v1:0',
  'localhost:80',
  'evil.example:443',
  'https:',
  'https:evil.example',
  'HTTPS:evil.example',
  'a:',
  ':',
  '::',
  ':a',
  'a::b',
  'C:',
  'c:x',
  'javascript:alert(1)',
  '%3A',
  'a\uFF1Ab',
  'a\uA789b',
];

/** Look suspicious but are plain unreserved characters: must pass and stay literal. */
const TRICKY_BUT_SAFE = ['.a', 'a.', '..a', 'a...b', '~', '~root', '-', '_'];

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
  { weight: 2, arbitrary: fc.constantFrom(...COLON_SEGMENTS) },
  // ":" between safe text: accepted unless it lands first, last, doubled, or after a scheme or drive letter.
  { weight: 2, arbitrary: fc.tuple(safeSegment, safeSegment).map(([a, b]) => `${a}:${b}`) },
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
      // dots alone, or dots before a `;` path parameter (`...` to IIS, `..;` to Tomcat, are `..`)
      /^\.+(?:;|$)/.test(s) ||
      s.length > 512 ||
      /[/\\?#%@]/.test(s) ||
      colonMisplaced(s) ||
      // control bytes and anything outside printable ASCII (fullwidth dots, homoglyphs, …)
      /[^\x21-\x7e]/.test(s),
  );
}

/**
 * ":" may sit inside a segment only: not first, not last, not doubled, and not after a WHATWG special scheme
 * (http, https, ws, wss, ftp, file), a scheme browsers act on (javascript, data, blob, vbscript) or a single
 * letter (a drive letter).
 */
function colonMisplaced(s: string): boolean {
  if (!s.includes(':')) return false;
  const parts = s.split(':');
  const before = parts[0]!;
  const schemes = ['http', 'https', 'ws', 'wss', 'ftp', 'file', 'javascript', 'data', 'blob', 'vbscript'];
  return parts.includes('') || /^[A-Za-z]$/.test(before) || schemes.includes(before.toLowerCase());
}

/** True when the segment list only uses unreserved characters and must therefore be accepted. */
function mustAccept(list: readonly string[]): boolean {
  return list.length <= 64 && list.every((s) => UNRESERVED.test(s) && !/^\.+$/.test(s) && s.length <= 512);
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
    // 10,000 runs take about 3 s here; on a heavily loaded machine they may take past vitest's 30 s.
  }, 90_000);
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

describe('buildUpstreamUrl with a route template (":" written by the template, or encoded)', () => {
  const { upstream } = makeUpstream({ baseUrl: 'https://api.example.com/v1beta/' });
  const GEMINI = compileTemplate('/models/{model}:generateContent');
  const BEDROCK = compileTemplate('/model/{modelId:colon}/converse');

  it('a ":" the template writes is sent literally (Google custom methods)', () => {
    expect(buildUpstreamUrl(upstream, ['models', 'gemini-2.0-flash:generateContent'], GEMINI).href).toBe(
      'https://api.example.com/v1beta/models/gemini-2.0-flash:generateContent',
    );
    expect(buildUpstreamUrl(upstream, ['v1', 'images:annotate'], compileTemplate('/v1/images:annotate')).pathname).toBe(
      '/v1beta/v1/images:annotate',
    );
    expect(buildUpstreamUrl(upstream, ['x', 'pre-a:b-post'], compileTemplate('/x/pre-{v:colon}-post')).pathname).toBe(
      '/v1beta/x/pre-a%3Ab-post',
    );
  });

  it('a ":" in a client value is sent as %3A (as AWS SDKs send Bedrock model ids)', () => {
    const url = buildUpstreamUrl(upstream, ['model', 'anthropic.claude-3-5-sonnet-20240620-v1:0', 'converse'], BEDROCK);
    expect(url.href).toBe('https://api.example.com/v1beta/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse');
    // Harmless even when the value looks like host:port: it stays one encoded path segment.
    expect(buildUpstreamUrl(upstream, ['model', 'localhost:80', 'converse'], BEDROCK).href).toBe(
      'https://api.example.com/v1beta/model/localhost%3A80/converse',
    );
  });

  it('values are encoded as before, only template text keeps its ":"', () => {
    expect(buildUpstreamUrl(upstream, ['models', "a+b$c'd:generateContent"], GEMINI).pathname).toBe(
      "/v1beta/models/a%2Bb%24c'd:generateContent",
    );
    expect(buildUpstreamUrl(upstream, ['files', 'a', 'b.txt'], compileTemplate('/files/*')).pathname).toBe('/v1beta/files/a/b.txt');
  });

  it('without a template every ":" is encoded', () => {
    expect(buildUpstreamUrl(upstream, ['models', 'gemini-2.0-flash:generateContent']).pathname).toBe(
      '/v1beta/models/gemini-2.0-flash%3AgenerateContent',
    );
  });

  it.each<[string, string[], readonly TemplateSegment[]]>([
    ['a literal that differs', ['models', 'x:generateContent'], compileTemplate('/other/{model}:generateContent')],
    ['a suffix that differs', ['models', 'x:countTokens'], GEMINI],
    ['an empty value', ['models', ':generateContent'], GEMINI],
    ['fewer segments than the template', ['models'], GEMINI],
    ['more segments than the template', ['models', 'x:generateContent', 'y'], GEMINI],
    ['no segment for a *', ['files'], compileTemplate('/files/*')],
    // Hand-built templates the schema refuses: the builder still never sends a segment that opens with ":".
    ['a literal opening with ":"', [':x'], [':x']],
    ['a prefix opening with ":"', [':a'], [{ param: 'v', prefix: ':', suffix: '', colons: false, int: false }]],
  ])('refuses segments that do not fit the template: %s', (_label, segments, template) => {
    expectKeywardError(thrown(() => buildUpstreamUrl(upstream, segments, template)), 'bad_path');
  });
});

describe('buildUpstreamUrl with a route template (property)', () => {
  const valueArb = fc.oneof(
    safeSegment,
    fc.constantFrom(...COLON_SEGMENTS, ...ADVERSARIAL),
    fc.tuple(safeSegment, safeSegment).map(([a, b]) => `${a}:${b}`),
    fc.string({ unit: 'binary-ascii', maxLength: 10 }),
  );
  const templates: Array<[string, (value: string) => string[], (encoded: string) => string]> = [
    ['/models/{model}:generateContent', (v) => ['models', `${v}:generateContent`], (e) => `models/${e}:generateContent`],
    ['/model/{modelId:colon}/converse', (v) => ['model', v, 'converse'], (e) => `model/${e}/converse`],
    ['/x/pre-{v:colon}-post', (v) => ['x', `pre-${v}-post`], (e) => `x/pre-${e}-post`],
  ];

  it('what the matcher accepts is sent under the base, with the value encoded and the template text as written', () => {
    let accepted = 0;
    fc.assert(
      fc.property(baseSpec, fc.constantFrom(...templates), valueArb, (spec, [path, segmentsOf, expected], value) => {
        const upstream = upstreamFor(spec);
        const template = compileTemplate(path);
        const segments = segmentsOf(value);
        const param = template.find((part): part is Extract<TemplateSegment, { param: string }> => typeof part === 'object' && 'param' in part)!;
        const index = template.indexOf(param);
        // What the route step lets through: every segment safe and the parameter capturing a value.
        if (!segments.every(isSafeSegment) || captureParam(param, segments[index]!) !== value) return;
        accepted++;
        const url = buildUpstreamUrl(upstream, segments, template);
        expect(url.origin).toBe(expectedOrigin(spec));
        expect(url.pathname).toBe(expectedBasePath(spec) + expected(encodeURIComponent(value)));
        expect(url.search + url.hash).toBe('');
        expect(url.pathname.slice(expectedBasePath(spec).length)).not.toMatch(/^:|\/:/);
      }),
      { numRuns: 3_000 },
    );
    expect(accepted).toBeGreaterThan(300);
  });
});
