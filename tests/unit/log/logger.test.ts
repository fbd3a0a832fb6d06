import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLogger, getLogger, logScrubber } from '../../../lib/core/log/logger';
import { createRuntime } from '../../../lib/core/runtime';
import { testSessionSecrets } from '../../fixtures/secrets';
import { randomSecret } from '../../fixtures/secrets';
import { REGEX_SPECIAL_SECRET, expectedForms } from '../scrub-oracle';

/** A pino destination that keeps what was written. */
function capture() {
  const writes: string[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (line: string) => void writes.push(line) } });
  return {
    logger,
    text: () => writes.join(''),
    lines: () => writes.join('').split('\n').filter(Boolean),
  };
}

/** A secret registered with the shared log scrubber, as start-up does for every loaded secret. */
function registeredSecret(prefix?: string): string {
  const secret = randomSecret(prefix);
  logScrubber.add([secret]);
  return secret;
}

describe('createLogger', () => {
  it('writes one JSON line per call', () => {
    const out = capture();
    out.logger.info({ a: 1 }, 'hello');
    const lines = out.lines();
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ a: 1, msg: 'hello', app: 'keyward' });
  });

  it('scrubs a registered secret from the message', () => {
    const secret = registeredSecret();
    const out = capture();
    out.logger.info(`calling upstream with ${secret}`);
    expect(out.text()).not.toContain(secret);
    expect(JSON.parse(out.lines()[0]!).msg).toBe('calling upstream with [REDACTED]');
  });

  it('scrubs its URL-encoded and base64 forms too', () => {
    const secret = `${randomSecret()}/+=`; // needs encoding; not registered in parts
    logScrubber.add([secret]);
    const out = capture();
    out.logger.info({ a: encodeURIComponent(secret), b: Buffer.from(secret).toString('base64') }, 'forms');
    expect(out.text()).not.toContain(encodeURIComponent(secret));
    expect(out.text()).not.toContain(Buffer.from(secret).toString('base64'));
    expect(JSON.parse(out.lines()[0]!)).toMatchObject({ a: '[REDACTED]', b: '[REDACTED]' });
  });

  it('scrubs every form of it, also where the JSON line escapes a form once more', () => {
    const secret = `${randomSecret()}/é"`; // every form differs from the raw value
    logScrubber.add([secret]);
    const forms = expectedForms(secret);
    const out = capture();
    out.logger.info({ forms, blob: Buffer.from(`x${secret}yz`).toString('base64') }, forms.join(' '));
    out.logger.error(new Error(`upstream said ${forms.join(', ')}`));
    const text = out.text();
    for (const form of forms) {
      expect(text).not.toContain(form);
      expect(text).not.toContain(JSON.stringify(form).slice(1, -1));
    }
    expect(text).toContain('[REDACTED]');
  });

  it("scrubs a registered secret from an error's message and stack", () => {
    const secret = registeredSecret();
    const out = capture();
    const error = new Error(`upstream refused key ${secret}`, { cause: new Error(`inner ${secret}`) });
    out.logger.error({ err: error }, 'proxy failed');
    out.logger.error(error);
    const text = out.text();
    expect(text).not.toContain(secret);
    const line = JSON.parse(out.lines()[0]!);
    expect(line.err.message).toContain('[REDACTED]');
    expect(line.err.stack).toContain('[REDACTED]');
  });

  it('scrubs a registered secret from a URL with a query', () => {
    const secret = registeredSecret();
    const out = capture();
    const url = new URL('https://api.example.com/v1/items');
    url.searchParams.set('api_key', secret);
    out.logger.info({ url: url.href, request: { method: 'GET', url: url.toString() } }, 'forwarding');
    out.logger.info(`GET ${url.pathname}${url.search}`);
    expect(out.text()).not.toContain(secret);
  });

  it('scrubs a regex-special secret from a message and from JSON-escaped output', () => {
    logScrubber.add([REGEX_SPECIAL_SECRET]);
    const out = capture();
    out.logger.info({ body: JSON.stringify({ key: REGEX_SPECIAL_SECRET }) }, `raw ${REGEX_SPECIAL_SECRET}`);
    const text = out.text();
    expect(text).not.toContain(JSON.stringify(REGEX_SPECIAL_SECRET).slice(1, -1));
    for (const line of out.lines()) expect(JSON.stringify(JSON.parse(line))).not.toContain(REGEX_SPECIAL_SECRET);
  });

  it.each([
    ['headers.authorization', (v: string) => ({ headers: { authorization: `Bearer ${v}` } })],
    ['headers.cookie', (v: string) => ({ headers: { cookie: `session=${v}` } })],
    ['headers["x-api-key"]', (v: string) => ({ headers: { 'x-api-key': v } })],
    ['headers["set-cookie"]', (v: string) => ({ headers: { 'set-cookie': [`a=${v}`] } })],
    ['headers["proxy-authorization"]', (v: string) => ({ headers: { 'proxy-authorization': `Basic ${v}` } })],
    ['req.headers.authorization', (v: string) => ({ req: { headers: { authorization: `Bearer ${v}` } } })],
    ['password', (v: string) => ({ password: v })],
    ['token', (v: string) => ({ token: v })],
    ['user.secret', (v: string) => ({ user: { secret: v } })],
  ])('redacts %s even when the value was never registered', (_path, make) => {
    const unregistered = randomSecret('unregistered');
    const out = capture();
    out.logger.info(make(unregistered), 'request');
    expect(out.text()).not.toContain(unregistered);
    expect(out.text()).toContain('[REDACTED]');
  });

  it('keeps other headers', () => {
    const out = capture();
    out.logger.info({ headers: { authorization: 'Bearer x', accept: 'application/json' } });
    expect(JSON.parse(out.lines()[0]!).headers).toEqual({ authorization: '[REDACTED]', accept: 'application/json' });
  });

  it.each([
    ['a message', (l: ReturnType<typeof capture>['logger'], s: string) => l.info(s)],
    ['a field value', (l: ReturnType<typeof capture>['logger'], s: string) => l.info({ path: s }, 'x')],
    ['a field name', (l: ReturnType<typeof capture>['logger'], s: string) => l.info({ [s]: 1 }, 'x')],
    ['an error message', (l: ReturnType<typeof capture>['logger'], s: string) => l.error(new Error(s))],
  ])('CR/LF in %s cannot start a second log line', (_label, log) => {
    const forged = 'ok\r\n{"level":60,"msg":"forged"}\n\u2028x\r';
    const out = capture();
    log(out.logger, forged);
    const text = out.text();
    expect(text.endsWith('\n')).toBe(true);
    expect(text.slice(0, -1)).not.toMatch(/[\r\n]/);
    expect(JSON.parse(text)).toBeTypeOf('object');
  });

  // Regression test (fixed bug in lib/core/log/logger.ts, redact paths): the wildcard paths `*.password` (and friends) make pino's
  // redaction (@pinojs/redact) read the `password` getter of a URL *copy*, which throws "TypeError: Cannot
  // read private member #context from an object whose class did not declare it". So logging any object
  // that holds a URL instance one level down, e.g. logger.info({ target: url }), throws at the call site.
  it('can log a URL instance (and scrubs the secret in it)', () => {
    const secret = registeredSecret();
    const out = capture();
    const url = new URL(`https://api.example.com/v1/items?api_key=${secret}`);
    out.logger.info({ target: url }, 'forwarding');
    expect(out.text()).toContain('api.example.com');
    expect(out.text()).not.toContain(secret);
  });

  // Regression test (fixed bug in lib/core/log/scrub.ts, secretForms): a URL built with URL.searchParams / URLSearchParams (as
  // injectCredential does for `query` credentials) percent-encodes ( ) ! ' ~ — encodeURIComponent does not —
  // so a secret with those characters is written to the log in that form.
  it('scrubs a secret with ( ) ! from a URL built with searchParams', () => {
    const secret = `${randomSecret()}(!)`; // registered whole only
    logScrubber.add([secret]);
    const out = capture();
    const url = new URL('https://api.example.com/v1/items');
    url.searchParams.set('api_key', secret);
    out.logger.info({ url: url.href }, 'forwarding');
    expect(out.text()).not.toContain(url.searchParams.toString().slice('api_key='.length));
  });
});

describe('the log level', () => {
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  // The logger can be made before the settings are read (an error while loading them is logged): a level pino does
  // not know must not throw there, so that start-up gets to name KEYWARD_LOG_LEVEL.
  it.each(['verbose', ''])('a KEYWARD_LOG_LEVEL of %j does not stop the logger before the settings are read: info', (value) => {
    vi.stubEnv('KEYWARD_LOG_LEVEL', value);
    expect(createLogger({ destination: { write: () => undefined } }).level).toBe('info');
  });

  it("the runtime's shared logger takes the validated setting", () => {
    const runtime = createRuntime({ env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', KEYWARD_LOG_LEVEL: 'warn' }, serving: false });
    expect(runtime.logger).toBe(getLogger());
    expect(runtime.logger.level).toBe('warn');
    createRuntime({ env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory' }, serving: false });
    expect(getLogger().level).toBe('info');
  });
});
