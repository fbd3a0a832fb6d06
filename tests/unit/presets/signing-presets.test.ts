import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../../lib/core/config/load';
import { aws, hmac } from '../../../lib/core/presets';
import { buildRegistry } from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { thrown } from '../support';

const env = {
  AWS_ACCESS_KEY_ID: `AKIA${randomSecret('id').slice(0, 16)}`,
  AWS_SECRET_ACCESS_KEY: randomSecret('aws'),
  BILLING_KEY: randomSecret('bill'),
};

const routes = (definition: { config: { routes: readonly { method: string; path: string }[] } }) =>
  definition.config.routes.map((r) => `${r.method} ${r.path}`);

function configError(json: unknown): string {
  const error = thrown(() => parseConfig(json, 'KEYWARD_CONFIG'));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

describe('the aws preset', () => {
  it('defaults to Bedrock runtime in us-east-1: Converse and ConverseStream per allowed model, signed as "bedrock"', () => {
    const definition = aws();
    expect(definition.id).toBe('aws');
    expect(definition.config.baseUrl).toBe('https://bedrock-runtime.us-east-1.amazonaws.com/');
    expect(definition.config.auth).toEqual({
      type: 'aws-sigv4',
      service: 'bedrock',
      region: 'us-east-1',
      accessKeyId: { env: 'AWS_ACCESS_KEY_ID' },
      secret: { env: 'AWS_SECRET_ACCESS_KEY' },
      payload: 'signed',
    });
    expect(routes(definition)).toEqual([
      'POST /model/amazon.nova-micro-v1:0/converse',
      'POST /model/amazon.nova-micro-v1:0/converse-stream',
      'POST /model/amazon.nova-lite-v1:0/converse',
      'POST /model/amazon.nova-lite-v1:0/converse-stream',
      'POST /model/anthropic.claude-3-haiku-20240307-v1:0/converse',
      'POST /model/anthropic.claude-3-haiku-20240307-v1:0/converse-stream',
    ]);
    const registry = buildRegistry([definition], env);
    const plan = registry.get('aws')!.credential;
    expect(plan.source === 'static' && plan.credential.secrets).toEqual([
      env.AWS_SECRET_ACCESS_KEY,
      env.AWS_ACCESS_KEY_ID,
    ]);
  });

  it('caps output tokens, stamps the caller into requestMetadata, and reserves the capped bound', () => {
    const [converse, stream] = aws({ maxOutputTokens: 500, models: ['amazon.nova-pro-v1:0'] }).config.routes;
    expect(converse!.caps).toEqual({ '*': { 'body.inferenceConfig.maxTokens': 500 } });
    expect(converse!.identity).toEqual({ 'body.requestMetadata.keyward_user': 'userId' });
    expect(converse!.cost).toMatchObject({
      reserveFrom: { field: 'body.inferenceConfig.maxTokens' },
      usage: { json: ['usage.outputTokens'] },
    });
    expect(stream!.cost).toMatchObject({ reserveFrom: { field: 'body.inferenceConfig.maxTokens' } });
    expect(stream!.cost?.usage).toBeUndefined();
  });

  it('takes a region, any model ("*"), the Invoke routes on request, and temporary credentials', () => {
    const definition = aws({
      id: 'claude',
      region: 'eu-central-1',
      models: '*',
      invoke: true,
      sessionToken: { env: 'AWS_SESSION_TOKEN' },
    });
    expect(definition.config.baseUrl).toBe('https://bedrock-runtime.eu-central-1.amazonaws.com/');
    expect(definition.config.auth).toMatchObject({
      region: 'eu-central-1',
      sessionToken: { env: 'AWS_SESSION_TOKEN' },
    });
    expect(routes(definition)).toEqual([
      'POST /model/{model:colon}/converse',
      'POST /model/{model:colon}/converse-stream',
      'POST /model/{model:colon}/invoke',
      'POST /model/{model:colon}/invoke-with-response-stream',
    ]);
  });

  it('any other service: its endpoint and signature, with your routes', () => {
    const definition = aws({
      id: 'files',
      service: 's3',
      region: 'eu-west-1',
      payload: 'unsigned',
      baseUrl: 'https://reports-bucket.s3.eu-west-1.amazonaws.com/',
      routes: [
        { method: 'GET', path: '/reports/*' },
        { method: 'PUT', path: '/reports/*', maxRequestBytes: 50 * 1024 * 1024 },
      ],
    });
    expect(definition.config.auth).toMatchObject({ service: 's3', region: 'eu-west-1', payload: 'unsigned' });
    expect(routes(definition)).toEqual(['GET /reports/*', 'PUT /reports/*']);
    expect(
      aws({ service: 'execute-api', signingName: 'execute-api', routes: [{ method: 'GET', path: '/prod/orders' }] })
        .config.baseUrl,
    ).toBe('https://execute-api.us-east-1.amazonaws.com/');
    expect(configError({ upstreams: { api: { preset: 'aws', service: 'lambda' } } })).toContain('upstreams.api.routes');
  });

  it('the JSON form and the TypeScript form describe the same upstream', () => {
    const [fromJson] = parseConfig(
      { upstreams: { aws: { preset: 'aws', region: 'us-west-2', models: ['amazon.nova-lite-v1:0'] } } },
      'test',
    );
    const fromTs = aws({ region: 'us-west-2', models: ['amazon.nova-lite-v1:0'] });
    expect(routes(fromJson!)).toEqual(routes(fromTs));
    expect(fromJson!.config.auth).toEqual(fromTs.config.auth);
  });

  it('refuses what cannot sign or cannot be a path segment, naming the field', () => {
    expect(configError({ upstreams: { ai: { preset: 'aws', secret: { user: 'key' } } } })).toContain(
      'upstreams.ai.auth.secret: AWS keys come from the environment',
    );
    expect(
      configError({
        upstreams: { ai: { preset: 'aws', models: ['arn:aws:bedrock:us-east-1:123456789012:inference-profile/x'] } },
      }),
    ).toContain('upstreams.ai.models: Bedrock model ids are one path segment');
    expect(configError({ upstreams: { ai: { preset: 'aws', region: 'mars' } } })).toContain(
      'upstreams.ai.region: must be an AWS region',
    );
    expect(configError({ upstreams: { ai: { preset: 'aws', payload: 'unsigned' } } })).toContain(
      'upstreams.ai.auth.payload: UNSIGNED-PAYLOAD is accepted by S3 only',
    );
  });
});

describe('the hmac preset', () => {
  it('is the signature only: baseUrl and routes are yours', () => {
    const [definition] = parseConfig(
      {
        upstreams: {
          billing: {
            preset: 'hmac',
            secret: { env: 'BILLING_KEY' },
            prefix: 'sha256=',
            keyId: 'keyward-1',
            baseUrl: 'https://billing.internal.example/v1/',
            routes: [{ method: 'POST', path: '/invoices' }],
          },
        },
      },
      'test',
    );
    expect(definition!.config.auth).toMatchObject({
      type: 'hmac',
      secret: { env: 'BILLING_KEY' },
      algorithm: 'sha256',
      encoding: 'hex',
      header: 'x-signature',
      prefix: 'sha256=',
      timestampHeader: 'x-timestamp',
      keyId: 'keyward-1',
    });
    expect(routes(definition!)).toEqual(['POST /invoices']);
    const plan = buildRegistry([definition!], env).get('billing')!.credential;
    expect(plan.source === 'static' && plan.credential.signer?.streamedBody).toBe('buffer');
    expect(
      hmac({
        id: 'billing',
        secret: { env: 'BILLING_KEY' },
        baseUrl: 'https://billing.internal.example/v1/',
        routes: [{ method: 'GET', path: '/ping' }],
      }).config.auth.type,
    ).toBe('hmac');
  });

  it('needs a secret, a baseUrl and routes, each named when missing', () => {
    const message = configError({
      upstreams: {
        billing: { preset: 'hmac', routes: [{ method: 'GET', path: '/ping' }], baseUrl: 'https://b.example/' },
      },
    });
    expect(message).toContain('upstreams.billing.secret');
    expect(
      configError({
        upstreams: {
          billing: { preset: 'hmac', secret: { env: 'BILLING_KEY' }, routes: [{ method: 'GET', path: '/ping' }] },
        },
      }),
    ).toContain('upstreams.billing.baseUrl');
    expect(
      configError({
        upstreams: { billing: { preset: 'hmac', secret: { env: 'BILLING_KEY' }, baseUrl: 'https://b.example/' } },
      }),
    ).toContain('upstreams.billing.routes');
  });
});
