import { describe, expect, it } from 'vitest';
import { ConfigError, defineUpstream, parseConfig, type UpstreamDefinition } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { buildRegistry, type Env } from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { thrown } from '../support';

/** Configuration of request signing (`aws-sigv4`, `hmac`): every problem names its field, never a value. */

const AWS_AUTH = {
  type: 'aws-sigv4',
  service: 'bedrock',
  region: 'us-east-1',
  accessKeyId: { env: 'AWS_KEY_ID' },
  secret: { env: 'AWS_SECRET' },
};
const HMAC_AUTH = { type: 'hmac', secret: { env: 'HMAC_SECRET' } };

/** An upstream around `auth`, unchecked (the schema is what is under test). */
function upstream(auth: Record<string, unknown>, extra: Record<string, unknown> = {}): UpstreamInput {
  return {
    baseUrl: 'https://bedrock-runtime.us-east-1.amazonaws.com/',
    auth,
    routes: [{ method: 'POST', path: '/model/:model/converse' }],
    ...extra,
  } as UpstreamInput;
}

/** parseConfig must throw a ConfigError; returns its message. */
function configError(entry: UpstreamInput): string {
  const error = thrown(() => parseConfig({ upstreams: { ai: entry } }, 'test config'));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

/** buildRegistry must throw a ConfigError; returns its message. */
function registryError(definition: UpstreamDefinition, env: Env): string {
  const error = thrown(() => buildRegistry([definition], env));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

const awsEnv = () => ({ AWS_KEY_ID: `AKIA${randomSecret('id').slice(0, 16)}`, AWS_SECRET: randomSecret('aws') });

describe('aws-sigv4 configuration', () => {
  it('accepts a key pair from the environment, with defaults', () => {
    const [definition] = parseConfig({ upstreams: { ai: upstream(AWS_AUTH) } }, 'test config');
    expect(definition!.config.auth).toEqual({ ...AWS_AUTH, payload: 'signed' });
    const env = awsEnv();
    const built = buildRegistry([definition!], env).get('ai')!;
    expect(built.credential.source).toBe('static');
    const credential = built.credential.source === 'static' ? built.credential.credential : null;
    // The secret first (key rings read secrets[0]), then the access key id: both scrubbed.
    expect(credential?.secrets).toEqual([env.AWS_SECRET, env.AWS_KEY_ID]);
    expect(credential?.signer?.streamedBody).toBe('buffer');
    expect(credential?.headerName).toBeUndefined();
  });

  it('scrubs the session token too', () => {
    const env = { ...awsEnv(), AWS_TOKEN: randomSecret('token') };
    const definition = defineUpstream('ai', upstream({ ...AWS_AUTH, sessionToken: { env: 'AWS_TOKEN' } }));
    const plan = buildRegistry([definition], env).get('ai')!.credential;
    expect(plan.source === 'static' && plan.credential.secrets).toEqual([
      env.AWS_SECRET,
      env.AWS_KEY_ID,
      env.AWS_TOKEN,
    ]);
  });

  for (const [source, secret] of [
    ["a user's own key", { user: 'key' }],
    ['an OAuth token', { oauth: 'oidc' }],
    ['per-claim keys', { claim: 'org', keys: { acme: { env: 'ACME_AWS_SECRET' } } }],
  ] as const) {
    it(`refuses ${source} as the secret access key, naming auth.secret`, () => {
      const message = configError(upstream({ ...AWS_AUTH, secret }));
      expect(message).toContain('upstreams.ai.auth.secret: AWS keys come from the environment');
    });
  }

  it('refuses a key ring: an AWS key is a pair', () => {
    const message = configError(upstream(AWS_AUTH, { keys: { versions: [{ env: 'AWS_SECRET_NEXT' }] } }));
    expect(message).toContain('upstreams.ai.keys: an AWS key is a pair');
  });

  it('refuses an unsigned payload except for S3', () => {
    expect(configError(upstream({ ...AWS_AUTH, payload: 'unsigned' }))).toContain(
      'upstreams.ai.auth.payload: UNSIGNED-PAYLOAD is accepted by S3 only',
    );
    expect(() =>
      parseConfig({ upstreams: { s3: upstream({ ...AWS_AUTH, service: 's3', payload: 'unsigned' }) } }, 'test config'),
    ).not.toThrow();
  });

  it('names a malformed service, region or missing access key id', () => {
    expect(configError(upstream({ ...AWS_AUTH, service: 'Bedrock Runtime' }))).toContain(
      'upstreams.ai.auth.service: must be an AWS signing name',
    );
    expect(configError(upstream({ ...AWS_AUTH, region: 'us_east_1' }))).toContain(
      'upstreams.ai.auth.region: must be an AWS region',
    );
    const { accessKeyId: _omitted, ...withoutId } = AWS_AUTH;
    void _omitted;
    expect(configError(upstream(withoutId))).toContain('upstreams.ai.auth.accessKeyId');
  });

  it('refuses the headers the signature writes as pass-through or fixed headers', () => {
    const passThrough = configError(
      upstream(AWS_AUTH, { requestHeaders: ['accept', 'X-Amz-Date', 'x-amz-content-sha256', 'x-amz-security-token'] }),
    );
    expect(passThrough).toContain('upstreams.ai.requestHeaders.1: "x-amz-date" is written by the request signature');
    expect(passThrough).toContain(
      'upstreams.ai.requestHeaders.2: "x-amz-content-sha256" is written by the request signature',
    );
    expect(passThrough).toContain(
      'upstreams.ai.requestHeaders.3: "x-amz-security-token" is written by the request signature',
    );
    expect(passThrough).not.toContain('requestHeaders.0');
    // A fixed UNSIGNED-PAYLOAD would otherwise be taken by the signer as the payload's hash.
    const fixed = configError(upstream(AWS_AUTH, { headers: { 'X-Amz-Content-Sha256': 'UNSIGNED-PAYLOAD' } }));
    expect(fixed).toContain(
      'upstreams.ai.headers.X-Amz-Content-Sha256: "x-amz-content-sha256" is written by the request signature',
    );
    expect(fixed).not.toContain('UNSIGNED-PAYLOAD');
    expect(configError(upstream(AWS_AUTH, { requestHeaders: ['authorization'] }))).toContain(
      '"authorization" can never be passed through',
    );
  });

  it('refuses WebSocket routes (the handshake cannot be signed here)', () => {
    const message = configError(upstream(AWS_AUTH, { routes: [{ method: 'GET', path: '/stream', websocket: true }] }));
    expect(message).toContain('upstreams.ai.routes.0.websocket: WebSocket upgrades cannot be signed');
  });

  it('names the variable that is missing or malformed, never its value', () => {
    const definition = defineUpstream('ai', upstream({ ...AWS_AUTH, sessionToken: { env: 'AWS_TOKEN' } }));
    const env = awsEnv();
    expect(registryError(definition, { AWS_SECRET: env.AWS_SECRET, AWS_TOKEN: randomSecret() })).toContain(
      'upstreams.ai.auth.accessKeyId: environment variable AWS_KEY_ID is not set',
    );
    const spaced = `${env.AWS_KEY_ID} `;
    const message = registryError(definition, {
      AWS_KEY_ID: spaced,
      AWS_SECRET: env.AWS_SECRET,
      AWS_TOKEN: randomSecret(),
    });
    expect(message).toContain(
      'upstreams.ai.auth.accessKeyId: AWS_KEY_ID has surrounding whitespace or control characters (value not shown)',
    );
    expect(message).not.toContain(env.AWS_KEY_ID);
    const token = `${randomSecret('tok')}\n`;
    const tokenMessage = registryError(definition, { ...env, AWS_TOKEN: token });
    expect(tokenMessage).toContain('upstreams.ai.auth.sessionToken: AWS_TOKEN has surrounding whitespace');
    expect(tokenMessage).not.toContain(token.trim());
  });
});

describe('hmac configuration', () => {
  it('accepts the defaults and every credential source but OAuth', () => {
    const [definition] = parseConfig({ upstreams: { inhouse: upstream(HMAC_AUTH) } }, 'test config');
    expect(definition!.config.auth).toEqual({
      ...HMAC_AUTH,
      algorithm: 'sha256',
      encoding: 'hex',
      header: 'x-signature',
      timestampHeader: 'x-timestamp',
      keyIdHeader: 'x-key-id',
    });
    for (const secret of [{ user: 'key' }, { claim: 'org', keys: { acme: { env: 'ACME_HMAC' } } }]) {
      expect(() =>
        parseConfig({ upstreams: { inhouse: upstream({ ...HMAC_AUTH, secret }) } }, 'test config'),
      ).not.toThrow();
    }
    expect(configError(upstream({ ...HMAC_AUTH, secret: { oauth: 'oidc' } }))).toContain(
      'upstreams.ai.auth.secret: an OAuth access token cannot be an HMAC key',
    );
  });

  it('per-claim keys each sign with their own secret', () => {
    const definition = defineUpstream(
      'inhouse',
      upstream({ ...HMAC_AUTH, secret: { claim: 'org', keys: { acme: { env: 'A' }, globex: { env: 'G' } } } }),
    );
    const env = { A: randomSecret('a'), G: randomSecret('g') };
    const plan = buildRegistry([definition], env).get('inhouse')!.credential;
    expect(plan.source).toBe('claim');
    const byValue = plan.source === 'claim' ? plan.byValue : new Map();
    // Its own secret first; the other claim's after it, for the leak scrubber only.
    expect(byValue.get('acme')?.secrets).toEqual([env.A, env.G]);
    expect(byValue.get('globex')?.secrets).toEqual([env.G, env.A]);
    expect(byValue.get('globex')?.signer?.streamedBody).toBe('buffer');
  });

  it('refuses header names that cannot carry a signature, and names used twice', () => {
    expect(configError(upstream({ ...HMAC_AUTH, header: 'Host' }))).toContain(
      'upstreams.ai.auth.header: cannot carry a signature',
    );
    expect(configError(upstream({ ...HMAC_AUTH, timestampHeader: 'content-type' }))).toContain(
      'upstreams.ai.auth.timestampHeader: cannot carry a signature',
    );
    expect(configError(upstream({ ...HMAC_AUTH, header: 'X-Sig', timestampHeader: 'x-sig' }))).toContain(
      'upstreams.ai.auth.timestampHeader: must differ from auth.header',
    );
    expect(configError(upstream({ ...HMAC_AUTH, keyId: 'k1', keyIdHeader: 'x-timestamp' }))).toContain(
      'upstreams.ai.auth.keyIdHeader: must differ from auth.header and auth.timestampHeader',
    );
    expect(configError(upstream({ ...HMAC_AUTH, keyId: 'has space' }))).toContain(
      'upstreams.ai.auth.keyId: must be 1–128 printable ASCII characters',
    );
    expect(configError(upstream({ ...HMAC_AUTH, prefix: 'v1\r\n' }))).toContain(
      'upstreams.ai.auth.prefix: must be printable ASCII',
    );
  });

  it('refuses its signature headers as pass-through; the key id header only when a key id is sent', () => {
    const message = configError(
      upstream({ ...HMAC_AUTH, keyId: 'k1' }, { requestHeaders: ['X-Signature', 'x-timestamp', 'x-key-id'] }),
    );
    expect(message).toContain('upstreams.ai.requestHeaders.0: "x-signature" is written by the request signature');
    expect(message).toContain('upstreams.ai.requestHeaders.1: "x-timestamp" is written by the request signature');
    expect(message).toContain('upstreams.ai.requestHeaders.2: "x-key-id" is written by the request signature');
    expect(() =>
      parseConfig({ upstreams: { ai: upstream(HMAC_AUTH, { requestHeaders: ['x-key-id'] }) } }, 'test config'),
    ).not.toThrow();
  });
});
