import { z } from 'zod';
import { awsSigV4AuthSchema, credentialSourceSchema } from '../config/schema';
import { commonPresetOptions, definePreset, presetFunction, type RouteInput } from './preset';
import { modelsOption, namesStoredObject, outputTokensOption, serverToolsOption, textIdentity } from './shared';

/**
 * AWS, signed with Signature Version 4 (README "Request signing"). By default Amazon Bedrock's runtime
 * (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_Operations_Amazon_Bedrock_Runtime.html):
 * Converse and ConverseStream for the allowed models, with a closed body, the output-token cap and the caller
 * stamped into `requestMetadata`; InvokeModel and its streaming twin on request (`invoke: true`), since their
 * bodies are each model's own and go unchecked. Any other service (`service`): the endpoint and signature
 * only, with your `routes`.
 */

/** Small, inexpensive models that Bedrock serves on demand (no inference profile) in us-east-1. */
export const BEDROCK_DEFAULT_MODELS = [
  'amazon.nova-micro-v1:0',
  'amazon.nova-lite-v1:0',
  'anthropic.claude-3-haiku-20240307-v1:0',
] as const;

// A model id is one path segment: letters, digits, ".", "_", "-", and ":" only between them (`…-v1:0`).
const BEDROCK_MODEL_ID = /^[A-Za-z0-9._-]+(?::[A-Za-z0-9._-]+)*$/;

const BEDROCK = 'bedrock-runtime';

/**
 * Bedrock's system tools (`toolConfig.tools[].systemTool`), which Amazon Nova runs on its side, refused unless
 * `serverTools` names them: Nova's web grounding is billed per use (https://aws.amazon.com/bedrock/pricing/),
 * which `usage` does not report.
 */
export const BEDROCK_SERVER_TOOLS = ['nova_grounding', 'nova_code_interpreter'] as const;

const options = z.strictObject({
  ...commonPresetOptions,
  secret: credentialSourceSchema
    .optional()
    .describe(
      'The secret access key: {"env": "NAME"} (default AWS_SECRET_ACCESS_KEY). An AWS key comes from the environment only.',
    ),
  accessKeyId: awsSigV4AuthSchema.shape.accessKeyId.default({ env: 'AWS_ACCESS_KEY_ID' }),
  sessionToken: awsSigV4AuthSchema.shape.sessionToken.describe(
    'Temporary credentials only, e.g. {"env": "AWS_SESSION_TOKEN"}.',
  ),
  region: awsSigV4AuthSchema.shape.region.default('us-east-1'),
  service: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'must be an AWS endpoint prefix, e.g. "bedrock-runtime" or "s3"')
    .default(BEDROCK)
    .describe(
      'Endpoint prefix: "bedrock-runtime" (default: the Bedrock routes) or any other service (https://<service>.<region>.amazonaws.com/, your routes).',
    ),
  signingName: awsSigV4AuthSchema.shape.service
    .optional()
    .describe(
      'Signing name when it differs from the endpoint prefix (default: "bedrock" for bedrock-runtime, else the service).',
    ),
  payload: awsSigV4AuthSchema.shape.payload,
  models: modelsOption(BEDROCK_DEFAULT_MODELS).refine(
    (models) => models === '*' || models.every((model) => BEDROCK_MODEL_ID.test(model) && !model.startsWith('arn')),
    'Bedrock model ids are one path segment (an ARN, with its "/", cannot be one)',
  ),
  maxOutputTokens: outputTokensOption(4096),
  serverTools: serverToolsOption(BEDROCK_SERVER_TOOLS),
  invoke: z
    .boolean()
    .default(false)
    .describe(
      "Also InvokeModel and InvokeModelWithResponseStream: each model's native body, not checked (no output cap). Default false.",
    ),
});

type Options = z.output<typeof options>;

const loose = z.unknown();
const text = (max: number) => z.string().max(max);

/**
 * Content of the caller's own: no document, image or video read from S3 (`source: {"s3Location": {"uri": …}}`):
 * Bedrock reads it with Keyward's AWS key, so any user could have the model read any object that key can reach.
 * Inline bytes pass.
 */
const ownContent = <T extends z.ZodType>(schema: T) =>
  schema.refine(
    (value) => !namesStoredObject(value, (record) => Object.hasOwn(record, 's3Location')),
    "an s3Location is read with the server's AWS key: not accepted (send the bytes)",
  );

/**
 * Tools (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Tool.html, one member each): the
 * caller's own (`toolSpec`), cache points, and the system tools `serverTools` names.
 */
function toolConfig(serverTools: readonly string[]) {
  const kinds: z.ZodType[] = [z.strictObject({ toolSpec: loose }), z.strictObject({ cachePoint: loose })];
  if (serverTools.length > 0) kinds.push(z.strictObject({ systemTool: z.strictObject({ name: z.enum(serverTools as [string, ...string[]]) }) }));
  return z.strictObject({ tools: z.array(z.union(kinds)).max(128), toolChoice: loose.optional() });
}

/** Converse and ConverseStream bodies (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html). */
export function converseBody(serverTools: readonly string[] = []) {
  return z.object({
    messages: ownContent(z.array(loose).min(1).max(2048)),
    system: ownContent(z.array(loose).max(64)).optional(),
    inferenceConfig: z
      .strictObject({
        // Over the cap: lowered to it (overCap).
        maxTokens: z.number().int().min(1).optional(),
        temperature: z.number().min(0).max(1).optional(),
        topP: z.number().min(0).max(1).optional(),
        stopSequences: z.array(text(256)).max(4).optional(),
      })
      .optional(),
    toolConfig: toolConfig(serverTools).optional(),
    promptVariables: z.record(text(64), loose).optional(),
    additionalModelResponseFieldPaths: z.array(text(256)).max(10).optional(),
    requestMetadata: z.record(text(256), text(256)).optional(),
    performanceConfig: z.strictObject({ latency: z.enum(['standard', 'optimized']) }).optional(),
    // Not here on purpose: additionalModelRequestFields (model-native options, which can name their own token
    // bound) and guardrailConfig (the operator's choice, not the caller's). Extend the schema to allow them.
  });
}

function modelRoutes(model: string, o: Options): RouteInput[] {
  const converse = {
    body: converseBody(o.serverTools),
    caps: { '*': { 'body.inferenceConfig.maxTokens': o.maxOutputTokens } },
    overCap: 'clamp' as const,
    ...textIdentity('body.requestMetadata.keyward_user'),
    genAi: { provider: 'aws.bedrock', model: model === '{model:colon}' ? { param: 'model' } : { value: model } },
  };
  const reserve = { reserveFrom: { field: 'body.inferenceConfig.maxTokens' as const } };
  const routes: RouteInput[] = [
    {
      method: 'POST',
      path: `/model/${model}/converse`,
      ...converse,
      genAi: { ...converse.genAi, inputTokens: ['usage.inputTokens'], outputTokens: ['usage.outputTokens'] },
      cost: { ...reserve, usage: { json: ['usage.outputTokens'] } },
    },
    // An event stream (application/vnd.amazon.eventstream) reports no usage Keyward reads: the reservation is charged.
    { method: 'POST', path: `/model/${model}/converse-stream`, ...converse, cost: reserve },
  ];
  if (o.invoke) {
    routes.push(
      { method: 'POST', path: `/model/${model}/invoke` },
      { method: 'POST', path: `/model/${model}/invoke-with-response-stream` },
    );
  }
  return routes;
}

function routes(o: Options): RouteInput[] {
  if (o.service !== BEDROCK) return [];
  // The model is in the path: the allow-list is one literal route per model and action; "*" takes any id.
  const models = o.models === '*' ? ['{model:colon}'] : o.models;
  return models.flatMap((model) => modelRoutes(model, o));
}

export const awsPreset = definePreset({
  name: 'aws',
  options,
  build: (o) => ({
    baseUrl: `https://${o.service}.${o.region}.amazonaws.com/`,
    auth: {
      type: 'aws-sigv4',
      service: o.signingName ?? (o.service === BEDROCK ? 'bedrock' : o.service),
      region: o.region,
      accessKeyId: o.accessKeyId,
      secret: o.secret ?? { env: 'AWS_SECRET_ACCESS_KEY' },
      ...(o.sessionToken ? { sessionToken: o.sessionToken } : {}),
      payload: o.payload,
    },
    routes: routes(o),
    // X-Amzn-ErrorType is how the AWS SDKs tell AWS's errors apart (ThrottlingException, ValidationException…:
    // https://smithy.io/2.0/aws/protocols/aws-restjson1-protocol.html#operation-error-serialization); without it
    // every AWS error reaches them as an unknown one.
    responseHeaders:
      o.service === BEDROCK
        ? [
            'x-amzn-requestid',
            'x-amzn-errortype',
            'x-amzn-bedrock-input-token-count',
            'x-amzn-bedrock-output-token-count',
          ]
        : ['x-amzn-requestid', 'x-amzn-errortype'],
    timeoutMs: 120_000,
  }),
});

/** `aws({ region: 'eu-central-1', models: ['amazon.nova-lite-v1:0'] })`, or `aws({ service: 's3', routes: […] })`. */
export const aws = presetFunction(awsPreset);
