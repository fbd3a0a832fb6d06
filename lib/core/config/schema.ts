import { z } from 'zod';
import { ZOD_CONTRACT_MESSAGE, genAiSchema, responseTypeSchema, routePolicyFields, upstreamPolicyFields } from './policy';
import { templateParamNames, templateProblems, templateShape } from '../route/template';
import { shownName } from './error';
import { BODYLESS_METHODS } from '../forward/body';

/**
 * The one schema for upstream definitions: TypeScript adapters (`defineUpstream`) and the JSON file named by
 * KEYWARD_CONFIG are both parsed with it, and `npm run schema` writes the JSON Schema for editors from it.
 */

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** RFC 9110 §5.6.2 token: a header name, and a WebSocket subprotocol (RFC 6455 §4.1). */
export const HTTP_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
export const UPSTREAM_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** Headers that carry credentials or connection state: never configurable as pass-through. */
export const FORBIDDEN_PASS_THROUGH_HEADERS = new Set([
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'www-authenticate',
  'proxy-authenticate',
  'x-api-key',
  'api-key',
  // A mobile app's DPoP proof is for Keyward's URL (README "DPoP"): never the upstream's to see.
  'dpop',
  'host',
  'connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'expect',
  'content-length',
  'content-encoding',
  'location',
]);

export const secretRefSchema = z
  .strictObject({
    env: z
      .string()
      .regex(ENV_NAME, 'must be an environment variable name')
      .refine((name) => !name.toUpperCase().startsWith('NEXT_PUBLIC_'), {
        message: 'NEXT_PUBLIC_ variables are inlined into browser bundles and can never hold a secret',
      }),
  })
  .describe('Where the secret comes from: {"env": "NAME"} reads the environment variable NAME at start-up.');

const CLAIM_VALUE = /^[A-Za-z0-9._:@-]{1,128}$/;

/**
 * Where the credential for a call comes from. `{"env"}`: one service key for everyone. `{"user":"key"}`:
 * the caller's own key (bring-your-own-key, stored write-only through /api/keys/<upstream>). `{"oauth":"oidc"}`:
 * the caller's OAuth access token from their sign-in with that provider, kept server-side and refreshed.
 * `{"claim","keys"}`: a service key chosen by a claim of the session (e.g. one key per organisation).
 */
export const credentialSourceSchema = z.union([
  secretRefSchema,
  z.strictObject({ user: z.literal('key').describe("The caller's own key, stored through PUT /api/keys/<upstream>.") }),
  z.strictObject({
    oauth: z
      .string()
      .regex(/^[a-z0-9-]{1,32}$/)
      .describe('Auth.js provider id whose access token is attached (the OIDC provider is "oidc").'),
  }),
  z.strictObject({
    claim: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'must be a claim name').describe('Session claim that picks the key.'),
    keys: z
      .record(z.string().regex(CLAIM_VALUE, 'claim values are letters, digits and . _ : @ -'), secretRefSchema)
      .refine((keys) => Object.keys(keys).length > 0, 'must name at least one key')
      .describe('Claim value → secret.'),
  }),
], { error: 'must be {"env":"NAME"}, {"user":"key"}, {"oauth":"<provider id>"} or {"claim":"<name>","keys":{…}}' });

const headerNameSchema = z
  .string()
  .regex(HTTP_TOKEN, 'must be a valid HTTP header name')
  .transform((name) => name.toLowerCase());

/** AWS signing names that sign the path as sent (URI-encoded once) and accept UNSIGNED-PAYLOAD: S3 and its kin. */
export const S3_SIGNING_NAMES: ReadonlySet<string> = new Set(['s3', 's3-object-lambda', 's3-outposts']);

/**
 * Request headers a client must not choose for the upstream, though an operator may set them as fixed `headers`:
 * IIS, Symfony and other frameworks route by the path in `X-Original-URL` / `X-Rewrite-URL` (so a client's value
 * would reach a path no route allowed), and what proxies say of the client (its address, the host and scheme it
 * used, a path prefix) is what an upstream believes of the call. Never passed through (`requestHeaders`).
 */
export const ROUTING_REQUEST_HEADERS: ReadonlySet<string> = new Set([
  'x-original-url',
  'x-original-uri',
  'x-original-host',
  'x-rewrite-url',
  'x-host',
  'forwarded',
  'x-real-ip',
  'x-client-ip',
  'true-client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-cluster-client-ip',
]);

/** One of ROUTING_REQUEST_HEADERS, or any `X-Forwarded-*` (`-For`, `-Host`, `-Proto`, `-Ssl`, `-Scheme`, `-Uri`…). */
export function isRoutingRequestHeader(name: string): boolean {
  const lower = name.toLowerCase();
  return ROUTING_REQUEST_HEADERS.has(lower) || lower.startsWith('x-forwarded-');
}

/** Headers a SigV4 signature writes (lib/core/credential/aws-sigv4.ts); `host` is refused everywhere already. */
export const AWS_SIGNATURE_HEADERS = ['authorization', 'x-amz-date', 'x-amz-content-sha256', 'x-amz-security-token'] as const;

/** Names that cannot carry an HMAC signature, its time or key id: framing, routing and Keyward's own headers. */
const NOT_SIGNATURE_HEADERS = new Set([
  ...[...FORBIDDEN_PASS_THROUGH_HEADERS].filter((name) => name !== 'authorization' && name !== 'x-api-key' && name !== 'api-key'),
  'content-type',
  'accept-encoding',
  'user-agent',
  'x-request-id',
]);

const signatureHeaderSchema = headerNameSchema.refine((name) => !NOT_SIGNATURE_HEADERS.has(name), { message: 'cannot carry a signature' });

/**
 * Names that cannot carry a credential: the same (a key in `x-request-id` would replace the id Keyward sends, which
 * upstreams log and echo as a value that is no secret), but `proxy-authorization`, which an upstream behind an
 * authenticating proxy may need.
 */
export const NOT_CREDENTIAL_HEADERS: ReadonlySet<string> = new Set([...NOT_SIGNATURE_HEADERS].filter((name) => name !== 'proxy-authorization'));

/**
 * AWS Signature Version 4 (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html): every call is
 * signed with an access key pair read from the environment at start-up.
 */
export const awsSigV4AuthSchema = z.strictObject({
  type: z.literal('aws-sigv4'),
  service: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'must be an AWS signing name, e.g. "bedrock" or "s3"')
    .describe('The signing name in the credential scope: "bedrock" for Bedrock runtime, "s3", "execute-api"…'),
  region: z
    .string()
    .regex(/^[a-z0-9]+(?:-[a-z0-9]+){1,5}$/, 'must be an AWS region, e.g. "us-east-1"')
    .describe('The region in the credential scope, e.g. "us-east-1".'),
  accessKeyId: secretRefSchema.describe('The access key id. Scrubbed like a secret: AWS repeats it in error messages.'),
  secret: credentialSourceSchema.describe('The secret access key, from the environment ({"env": "NAME"}).'),
  sessionToken: secretRefSchema.optional().describe('The session token of temporary credentials (sent as X-Amz-Security-Token).'),
  payload: z
    .enum(['signed', 'unsigned'])
    .default('signed')
    .describe(
      '"signed" (default): the body\'s SHA-256 is signed; a streamed body is read whole first, under the route\'s ' +
        'maxRequestBytes. "unsigned" (S3 only): a streamed body is sent as it arrives, signed as UNSIGNED-PAYLOAD.',
    ),
});

/** A generic HMAC request signature for in-house APIs; the canonical string is in README "Request signing". */
export const hmacAuthSchema = z.strictObject({
  type: z.literal('hmac'),
  secret: credentialSourceSchema.describe('The shared key; its UTF-8 bytes are the HMAC key.'),
  algorithm: z.enum(['sha256', 'sha512']).default('sha256').describe('HMAC-SHA-256 (default) or HMAC-SHA-512.'),
  encoding: z.enum(['hex', 'base64']).default('hex').describe('How the signature is written (default lowercase hex).'),
  header: signatureHeaderSchema.default('x-signature').describe('Carries the signature (default x-signature).'),
  prefix: z
    .string()
    .max(64)
    .regex(/^[\x20-\x7e]*$/, 'must be printable ASCII (no line breaks)')
    .optional()
    .describe('Written before the signature, e.g. "sha256=".'),
  timestampHeader: signatureHeaderSchema.default('x-timestamp').describe('Carries the signing time, Unix seconds (default x-timestamp).'),
  keyId: z
    .string()
    .regex(/^[\x21-\x7e]{1,128}$/, 'must be 1–128 printable ASCII characters without spaces')
    .optional()
    .describe('Names the key to the verifier; sent in keyIdHeader. Not a secret.'),
  keyIdHeader: signatureHeaderSchema.default('x-key-id').describe('Carries keyId when set (default x-key-id).'),
});

const authSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('header'),
    name: headerNameSchema.refine((n) => !NOT_CREDENTIAL_HEADERS.has(n), { message: 'cannot carry a credential' }),
    prefix: z
      .string()
      .max(64)
      .regex(/^[\x20-\x7e]*$/, 'must be printable ASCII (no line breaks)')
      .optional()
      .describe('Written before the secret, e.g. "Token ".'),
    secret: credentialSourceSchema,
  }),
  z.strictObject({ type: z.literal('bearer'), secret: credentialSourceSchema }),
  z.strictObject({
    type: z.literal('basic'),
    username: z.union([z.string().min(1).max(256).regex(/^[^:]*$/, 'must not contain ":"'), secretRefSchema]),
    secret: credentialSourceSchema.describe('The password.'),
  }),
  z.strictObject({
    type: z.literal('query'),
    name: z.string().regex(/^[A-Za-z0-9_.~-]{1,64}$/, 'must be a plain query parameter name'),
    secret: credentialSourceSchema,
  }),
  awsSigV4AuthSchema,
  hmacAuthSchema,
]);

/** Bounds for maxDecodedResponseBytes: the default (64 MiB) and the largest value accepted (1 TiB). */
export const DEFAULT_MAX_DECODED_RESPONSE_BYTES = 64 * 1024 * 1024;
const MAX_DECODED_RESPONSE_BYTES = 1024 ** 4;
/** WebSocket message caps (lib/core/ws): 1 MiB by default, at most 256 MiB (a message is held whole). */
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/**
 * Subprotocols that carry a credential to the upstream (OpenAI's browser key, a Kubernetes bearer token): the key
 * goes in "auth", never in a list a client may offer from. Compared case-insensitively.
 */
const CREDENTIAL_SUBPROTOCOLS = ['openai-insecure-api-key.', 'base64url.bearer.authorization.k8s.io.'];

/** The subprotocols a WebSocket route lets a client offer (the allow-list at the upgrade, lib/node/websocket.ts). */
const subprotocolsSchema = z
  .array(
    z
      .string()
      .max(128)
      .regex(HTTP_TOKEN, 'must be a WebSocket subprotocol (an HTTP token: no spaces, commas or quotes)')
      .refine((name) => !CREDENTIAL_SUBPROTOCOLS.some((prefix) => name.toLowerCase().startsWith(prefix)), {
        message: 'carries a credential: the key goes in "auth", never in a subprotocol a client may offer',
      }),
  )
  .max(32)
  .superRefine((names, ctx) => {
    names.forEach((name, index) => {
      if (names.indexOf(name) !== index) ctx.addIssue({ code: 'custom', path: [index], message: `"${shownName(name)}" is listed twice` });
    });
  });

const linksSchema = z
  .enum(['rewrite', 'same-path', 'drop'])
  .describe(
    'What becomes of the upstream\'s Link header (RFC 8288; pagination): "rewrite" writes each link under baseUrl onto ' +
      '/api/proxy/<upstream>/…; "same-path" keeps only the page links (next, prev, first, last), with their query, on the ' +
      'path that was called (for APIs whose links name the list another way, such as GitHub\'s /repositories/<id>/…); ' +
      '"drop" passes none. A link to anywhere else is always dropped.',
  );

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
export type RouteMethod = (typeof METHODS)[number];

const routePathSchema = z
  .string()
  .max(1024)
  .superRefine((path, ctx) => {
    // The template grammar lives with the matcher that reads it (lib/core/route/template.ts).
    for (const message of templateProblems(path)) ctx.addIssue({ code: 'custom', message });
  })
  .describe(
    'Path template under baseUrl: literal segments, ":name" parameters, "{name}" parameters with literal text around ' +
      'them in one segment (e.g. "{model}:generateContent"; "{name:int}" takes only an integer in decimal, such as "12" ' +
      'or "-3", whole or inside a segment; "{name:colon}" lets the value contain ":"), and an optional final "*".',
  );

export const routeSchema = z.strictObject({
  method: z.enum(METHODS),
  path: routePathSchema,
  roles: z
    .array(z.string().min(1).max(64))
    .optional()
    .describe('The session needs at least one of these roles. Absent: any signed-in user.'),
  maxRequestBytes: z.number().int().positive().max(1024 ** 3).optional(),
  maxDecodedResponseBytes: z
    .number()
    .int()
    .positive()
    .max(MAX_DECODED_RESPONSE_BYTES)
    .optional()
    .describe("Overrides the upstream's maxDecodedResponseBytes for this route."),
  timeoutMs: z.number().int().min(100).max(600_000).optional().describe("Overrides the upstream's timeoutMs for this route."),
  cacheControl: z
    .string()
    .max(256)
    .regex(/^[\x20-\x7e]*$/)
    .optional()
    .describe('Cache-Control for responses of this route. Default "private, no-store". With a per-user credential ({"user"}, {"oauth"}, {"claim"}) it must say "private" (without an argument) or "no-store", and not "public".'),
  response: responseTypeSchema.optional(),
  links: linksSchema.optional().describe("Overrides the upstream's links for this route."),
  websocket: z
    .boolean()
    .optional()
    .describe('This GET route accepts WebSocket upgrades (served by `npm start`, the fast lane, only). Default false.'),
  maxMessageBytes: z
    .number()
    .int()
    .positive()
    .max(MAX_MESSAGE_BYTES)
    .optional()
    .describe("Overrides the upstream's maxMessageBytes for this WebSocket route."),
  idleTimeoutMs: z
    .number()
    .int()
    .min(1_000)
    .max(86_400_000)
    .optional()
    .describe("Overrides the upstream's idleTimeoutMs for this WebSocket route."),
  subprotocols: subprotocolsSchema
    .optional()
    .describe("Overrides the upstream's subprotocols for this WebSocket route (replaces the list, [] accepts none)."),
  genAi: genAiSchema.optional(),
  decoy: z
    .boolean()
    .optional()
    .describe(
      'A decoy route (honeytoken): never forwarded and never called by the real UI. Any call that matches it is refused ' +
        '(401) and raised as a security event with the caller\'s session; it needs no credential and its roles are ignored. Default false.',
    ),
  ...routePolicyFields,
}).superRefine((route, ctx) => {
  if (route.websocket && route.method !== 'GET') {
    ctx.addIssue({ code: 'custom', path: ['websocket'], message: 'a WebSocket upgrade is a GET request' });
  }
  for (const field of ['maxMessageBytes', 'idleTimeoutMs', 'subprotocols'] as const) {
    if (route[field] !== undefined && !route.websocket) {
      ctx.addIssue({ code: 'custom', path: [field], message: 'applies to WebSocket routes only ("websocket": true)' });
    }
  }
  const params = new Set(templateParamNames(route.path));
  for (const name of Object.keys(route.paramEquals ?? {})) {
    if (!params.has(name)) ctx.addIssue({ code: 'custom', path: ['paramEquals', name], message: `"${shownName(name)}" is not a parameter of the path` });
  }
  // Body fields can only be enforced on a body Keyward parses, i.e. one with a contract.
  // A price table's model field too: unread, every call would be priced (and settled) at "*" while the
  // upstream reads a dearer model from the body.
  const bodyTargets: [string[], string][] = [
    ...Object.keys(route.identity ?? {}).map((target): [string[], string] => [['identity'], target]),
    ...Object.values(route.caps ?? {}).flatMap((caps) => Object.keys(caps).map((target): [string[], string] => [['caps'], target])),
    ...(route.cost?.reserveFrom ? [[['cost'], route.cost.reserveFrom.field] as [string[], string]] : []),
    ...(route.cost?.price ? [[['cost', 'price', 'model'], route.cost.price.model] as [string[], string]] : []),
  ];
  const carriesBody = !BODYLESS_METHODS.has(route.method);
  for (const [path, target] of bodyTargets) {
    if (target.startsWith('query.') && carriesBody && !route.body) {
      // Many servers read query and body parameters as one (Rails' params, PHP's $_REQUEST, Stripe), a body's
      // over the query's: a body forwarded as the client sent it would carry its own value of the field.
      ctx.addIssue({
        code: 'custom',
        path,
        message:
          `"${shownName(target)}" on a ${route.method} route needs a "body" contract: without one the client's body is forwarded as sent, ` +
          'and an upstream that reads query and body parameters together would take the field from it',
      });
    } else if (target.startsWith('body.') && !route.body) {
      ctx.addIssue({ code: 'custom', path, message: `"${shownName(target)}" needs a "body" contract on this route` });
    } else if (target.startsWith('body.') && route.bodyFormat === 'multipart' && target.split('.').length !== 2) {
      // Multipart parts are flat: a part's name is one field, there is no nesting to reach into.
      ctx.addIssue({ code: 'custom', path, message: `"${shownName(target)}" must name a top-level part ("body.<name>") of a multipart body` });
    }
  }
  if (route.bodyFormat && !route.body) {
    ctx.addIssue({ code: 'custom', path: ['bodyFormat'], message: 'needs a "body" contract on this route' });
  }
  if (route.formArrays && route.bodyFormat !== 'form') {
    ctx.addIssue({ code: 'custom', path: ['formArrays'], message: 'applies to form bodies only ("bodyFormat": "form")' });
  }
  if (route.body && BODYLESS_METHODS.has(route.method)) {
    ctx.addIssue({ code: 'custom', path: ['body'], message: `${route.method} requests are forwarded without a body` });
  }
});

const isoTime = z.iso.datetime({ offset: true }).describe('An ISO 8601 time, e.g. "2027-01-31T00:00:00Z".');

/**
 * The service key's ring: more versions from the environment (with optional not-before and expiry), the
 * default lifetime of managed versions added through `keyward keys rotate`, the grace window during which
 * the previous version stays usable as a fallback, and the canary request that must pass before a switch.
 */
const keyRingSchema = z
  .strictObject({
    versions: z
      .array(z.strictObject({ env: secretRefSchema.shape.env, notBefore: isoTime.optional(), expiresAt: isoTime.optional() }))
      .max(16)
      .default([])
      .describe('More versions from environment variables; a version takes over from its notBefore.'),
    primaryExpiresAt: isoTime.optional().describe('Expiry of the version in auth.secret.'),
    expiresInDays: z.number().int().min(1).max(3650).default(90).describe('Lifetime of managed versions (default 90 days).'),
    graceSeconds: z.number().int().min(0).max(30 * 86_400).default(86_400).describe('How long a replaced version stays usable as a fallback.'),
    canary: z
      .strictObject({
        method: z.enum(['GET', 'HEAD']),
        path: routePathSchema.refine((path) => templateParamNames(path).length === 0 && !path.includes('*'), 'must be a literal path'),
      })
      .optional()
      .describe('A cheap, safe call sent with a new version before traffic switches to it; 2xx passes.'),
  })
  .describe('Versions, expiry and rotation of the service key.');

const baseUrlSchema = z
  .string()
  .superRefine((value, ctx) => {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'must be an absolute http(s) URL' });
      return;
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      ctx.addIssue({ code: 'custom', message: 'must use https (or http)' });
    }
    if (url.username || url.password) {
      ctx.addIssue({ code: 'custom', message: 'must not contain credentials; use "auth"' });
    }
    if (url.search || url.hash || value.includes('?') || value.includes('#')) {
      ctx.addIssue({ code: 'custom', message: 'must not contain a query or fragment' });
    }
  })
  .transform((value) => {
    const url = new URL(value);
    if (!url.pathname.endsWith('/')) url.pathname += '/';
    return url.href;
  });

/**
 * A fixed header value shaped like a credential: an auth scheme and a token (`Bearer …`), a JWT (Supabase's
 * `apikey`), or a key with a prefix its issuer documents (OpenAI, Anthropic, Stripe, GitHub, Slack, GitLab,
 * Hugging Face, Google, AWS access key ids). A value in the config is sent as written and is not one of the
 * secrets Keyward scrubs from answers and logs; a key goes in `auth`, from the environment. A key of no known
 * shape is not recognised: this catches the common paste, it cannot prove a value is not a key.
 */
const KEY_SHAPED = [
  /^\s*(?:bearer|basic)\s+\S{8,}/i,
  /eyJ[\w-]{8,}\.eyJ[\w-]{8,}\./,
  // The random part holds a digit, as a key's does (and as `hf_transfer_enabled_for_all` does not).
  /(?:^|[^\w-])(?:sk-(?:ant-|proj-|svcacct-)?|[sr]k_(?:live|test)_|whsec_|gh[pousr]_|github_pat_|xox[abposr]-|glpat-|hf_|AIza)(?=[A-Za-z_-]*\d)[\w-]{16,}/,
  /(?:^|[^A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])/,
];

/** Request header name → value set by the config (never a secret): `headers` and `defaultHeaders`. */
const headerValuesSchema = z
  .record(
    z.string().regex(HTTP_TOKEN, 'must be a valid HTTP header name'),
    z.string().max(1024).regex(/^[\x20-\x7e]*$/, 'must be printable ASCII (no line breaks)'),
  )
  .default({});

export const upstreamSchema = z
  .strictObject({
    baseUrl: baseUrlSchema.describe('Fixed base URL. Requests are only ever sent under this origin and path.'),
    auth: authSchema.describe('How the server-held credential is attached.'),
    routes: z.array(routeSchema).min(1).max(1000).describe('The only calls Keyward forwards (deny by default).'),
    timeoutMs: z.number().int().min(100).max(600_000).default(30_000),
    maxCallsInFlightPerUser: z
      .number()
      .int()
      .min(1)
      .max(256)
      .default(32)
      .describe(
        'Calls one user may have in progress to this upstream at once, per process (WebSockets included); one more is ' +
          'refused with 429 rate_limited until one ends, so one user cannot hold every pooled connection (256). Default 32.',
      ),
    maxRequestBytes: z
      .number()
      .int()
      .positive()
      .max(1024 ** 3)
      .default(10 * 1024 * 1024)
      .describe('Default request body cap for routes that set none.'),
    maxDecodedResponseBytes: z
      .number()
      .int()
      .positive()
      .max(MAX_DECODED_RESPONSE_BYTES)
      .default(DEFAULT_MAX_DECODED_RESPONSE_BYTES)
      .describe(
        'Cap on the decoded size of a compressed upstream response (gzip, deflate, br): past it the stream is cut ' +
          'and logged as an error (decompression bombs). Uncompressed bodies are not capped. Default 64 MiB; a route may set its own.',
      ),
    maxMessageBytes: z
      .number()
      .int()
      .positive()
      .max(MAX_MESSAGE_BYTES)
      .default(DEFAULT_MAX_MESSAGE_BYTES)
      .describe('WebSocket routes: largest message accepted in either direction; a larger one closes the socket (1009). Default 1 MiB.'),
    idleTimeoutMs: z
      .number()
      .int()
      .min(1_000)
      .max(86_400_000)
      .default(60_000)
      .describe('WebSocket routes: the socket is closed (4408) after this long without a message either way. Default 60 s.'),
    subprotocols: subprotocolsSchema
      .default([])
      .describe(
        'WebSocket routes: the subprotocols (Sec-WebSocket-Protocol) a client may offer, passed to the upstream, e.g. ' +
          '["realtime"]. An upgrade offering any other is refused (400). Default: none.',
      ),
    allowInsecureHttp: z
      .boolean()
      .default(false)
      .describe('Allow a plain-http baseUrl on a non-loopback host (the key would travel unencrypted).'),
    requestHeaders: z
      .array(headerNameSchema)
      .max(64)
      .default([])
      .describe('Extra request headers to forward, beyond the built-in allow-list.'),
    responseHeaders: z
      .array(headerNameSchema)
      .max(64)
      .default([])
      .describe('Extra response headers to pass back, beyond the built-in allow-list.'),
    links: linksSchema.default('rewrite'),
    headers: headerValuesSchema.describe(
      'Fixed request headers sent on every call, replacing any the client sent, e.g. {"openai-organization": "org_…"}. ' +
        'Not for secrets: those go in "auth".',
    ),
    defaultHeaders: headerValuesSchema.describe(
      'Request headers sent when the client sent none (a name the client may send must be in requestHeaders), ' +
        'e.g. {"anthropic-version": "2023-06-01"}. Not for secrets.',
    ),
    ...upstreamPolicyFields,
    keys: keyRingSchema.optional(),
  })
  .superRefine((upstream, ctx) => {
    let url: URL;
    try {
      url = new URL(upstream.baseUrl);
    } catch {
      return; // baseUrl already has its own issue; zod 4 keeps refining after a custom issue
    }
    if (url.protocol === 'http:' && !isLoopbackHost(url.hostname) && !upstream.allowInsecureHttp) {
      ctx.addIssue({
        code: 'custom',
        path: ['baseUrl'],
        message: 'plain http is only allowed to loopback hosts unless allowInsecureHttp is true',
      });
    }
    if (upstream.keys && !('env' in upstream.auth.secret)) {
      ctx.addIssue({ code: 'custom', path: ['keys'], message: 'key rings apply to a service key ({"env": …})' });
    }
    for (const field of ['headers', 'defaultHeaders'] as const) {
      for (const name of Object.keys(upstream[field])) {
        const lower = name.toLowerCase();
        const credentialHeader = upstream.auth.type === 'header' ? upstream.auth.name : undefined;
        if (FORBIDDEN_PASS_THROUGH_HEADERS.has(lower) || lower === credentialHeader || lower === 'x-request-id' || lower === 'accept-encoding') {
          ctx.addIssue({ code: 'custom', path: [field, name], message: `"${lower}" cannot be set here` });
        } else if (KEY_SHAPED.some((shape) => shape.test(upstream[field][name]!))) {
          ctx.addIssue({
            code: 'custom',
            path: [field, name],
            message: 'looks like a key or token, and a fixed header is sent as written, never scrubbed from answers or logs: put the key in "auth" ({"env": …})',
          });
        }
      }
    }
    for (const [list, key] of [
      [upstream.requestHeaders, 'requestHeaders'],
      [upstream.responseHeaders, 'responseHeaders'],
    ] as const) {
      list.forEach((name, index) => {
        const credentialHeader = upstream.auth.type === 'header' ? upstream.auth.name : undefined;
        if (FORBIDDEN_PASS_THROUGH_HEADERS.has(name) || name === credentialHeader) {
          ctx.addIssue({ code: 'custom', path: [key, index], message: `"${name}" can never be passed through` });
        } else if (key === 'requestHeaders' && isRoutingRequestHeader(name)) {
          ctx.addIssue({
            code: 'custom',
            path: [key, index],
            message: `"${name}" is never taken from a client: upstreams route by it or trust it about the caller (set a fixed value in "headers" if the upstream needs one)`,
          });
        }
      });
    }
    signedAuthIssues(upstream, ctx);
    if (!('env' in upstream.auth.secret)) {
      upstream.routes.forEach((route, index) => {
        if (route.cacheControl !== undefined && sharedCacheMayStore(route.cacheControl)) {
          ctx.addIssue({
            code: 'custom',
            path: ['routes', index, 'cacheControl'],
            message: `each user's answers come with their own credential (${credentialShown(upstream.auth.secret)}): must hold "private" (without an argument) or "no-store", and not "public", so no shared cache (a CDN) hands one user's answer to another`,
          });
        }
      });
    }
    // Two routes of one method for exactly the same requests: only one could ever serve, and which one would
    // depend on their order. Refused, so a route meant to narrow another (its roles) is never silently dead.
    const shapes = new Map<string, number>();
    upstream.routes.forEach((route, index) => {
      if (templateProblems(route.path).length > 0) return;
      const shape = `${route.method} ${templateShape(route.path)}`;
      const first = shapes.get(shape);
      if (first === undefined) shapes.set(shape, index);
      else {
        ctx.addIssue({
          code: 'custom',
          path: ['routes', index, 'path'],
          message: `matches the same ${route.method} requests as routes.${first}: only one could serve; remove one (to change a preset's route, declare it with the preset's path)`,
        });
      }
    });
  });

/**
 * Whether a shared cache (a CDN, a reverse proxy) may store an answer sent with this Cache-Control (RFC 9111 §3,
 * §5.2.2): unless it says `private` or `no-store` without an argument (`private="set-cookie"` keeps only the named
 * headers from a shared cache, not the answer), or whenever it says `public`; and whenever the value is not a list
 * of directives a cache would read as written. A request with a cookie does not stop a shared cache from storing
 * the answer, so only these directives keep it to the browser.
 */
function sharedCacheMayStore(cacheControl: string): boolean {
  const directives = cacheDirectives(cacheControl);
  if (directives === null || directives.has('public')) return true;
  // A cache that understands `must-understand` ignores `no-store` for the statuses it knows (§5.2.2.3).
  const noStore = directives.get('no-store') === 'bare' && !directives.has('must-understand');
  return directives.get('private') !== 'bare' && !noStore;
}

/**
 * Cache-Control's directives (RFC 9110 §5.6: `name [= token / quoted-string]`, comma-separated), by lowercased
 * name: `bare`, or `qualified` when any of its occurrences has an argument; null when the value is not such a
 * list. Written here because a comma inside a quoted argument does not separate directives, and the rule above
 * must read the value as a cache does; a header-parsing library for this one check would be more than it needs.
 */
function cacheDirectives(value: string): Map<string, 'bare' | 'qualified'> | null {
  const TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;
  const directives = new Map<string, 'bare' | 'qualified'>();
  let at = 0;
  const skipSpace = () => {
    while (value[at] === ' ' || value[at] === '\t') at++;
  };
  const token = () => {
    const start = at;
    while (at < value.length && TOKEN.test(value[at]!)) at++;
    return value.slice(start, at);
  };
  while (at < value.length) {
    skipSpace();
    if (value[at] === ',') {
      at++;
      continue;
    }
    if (at >= value.length) break;
    const name = token().toLowerCase();
    if (name === '') return null;
    skipSpace();
    let qualified = false;
    if (value[at] === '=') {
      at++;
      skipSpace();
      qualified = true;
      if (value[at] === '"') {
        at++;
        while (at < value.length && value[at] !== '"') at += value[at] === '\\' ? 2 : 1;
        if (value[at] !== '"') return null;
        at++;
      } else if (token() === '') return null;
      skipSpace();
    }
    if (at < value.length && value[at] !== ',') return null;
    directives.set(name, qualified || directives.get(name) === 'qualified' ? 'qualified' : 'bare');
  }
  return directives;
}

/** A per-user secret's kind, as the config writes it (never a value: these hold none). */
function credentialShown(secret: CredentialSource): string {
  return 'user' in secret ? '{"user":"key"}' : 'oauth' in secret ? '{"oauth":…}' : '{"claim":…}';
}

/**
 * What request signing (`aws-sigv4`, `hmac`) cannot be combined with, and the headers it owns: a client can
 * neither pass them through nor may fixed `headers` set them, so the signature is always Keyward's own.
 */
function signedAuthIssues(upstream: UpstreamConfig, ctx: z.RefinementCtx): void {
  const { auth } = upstream;
  if (auth.type !== 'aws-sigv4' && auth.type !== 'hmac') return;
  const issue = (path: PropertyKey[], message: string) => ctx.addIssue({ code: 'custom', path, message });
  if (auth.type === 'aws-sigv4') {
    // An AWS key is a pair (and a session token goes with its pair): one stored value cannot stand for it.
    if (!('env' in auth.secret)) issue(['auth', 'secret'], 'AWS keys come from the environment ({"env": …}); a user\'s key, OAuth token or per-claim key cannot sign AWS requests');
    if (upstream.keys) issue(['keys'], 'an AWS key is a pair (accessKeyId and secret): rotate it by replacing both environment variables');
    if (auth.payload === 'unsigned' && !S3_SIGNING_NAMES.has(auth.service)) issue(['auth', 'payload'], 'UNSIGNED-PAYLOAD is accepted by S3 only ("service": "s3")');
  } else {
    if ('oauth' in auth.secret) issue(['auth', 'secret'], 'an OAuth access token cannot be an HMAC key');
    if (auth.timestampHeader === auth.header) issue(['auth', 'timestampHeader'], 'must differ from auth.header');
    if (auth.keyId !== undefined && (auth.keyIdHeader === auth.header || auth.keyIdHeader === auth.timestampHeader)) {
      issue(['auth', 'keyIdHeader'], 'must differ from auth.header and auth.timestampHeader');
    }
  }
  // The handshake's headers are the WebSocket client's own: a signature over them cannot be made here.
  upstream.routes.forEach((route, index) => {
    if (route.websocket) issue(['routes', index, 'websocket'], `WebSocket upgrades cannot be signed ("auth.type": "${auth.type}")`);
  });
  // Names refused for every upstream (authorization, host…) already have their issue.
  const written = new Set(signatureHeaderNames(auth).filter((name) => !FORBIDDEN_PASS_THROUGH_HEADERS.has(name)));
  upstream.requestHeaders.forEach((name, index) => {
    if (written.has(name)) issue(['requestHeaders', index], `"${name}" is written by the request signature`);
  });
  for (const field of ['headers', 'defaultHeaders'] as const) {
    for (const name of Object.keys(upstream[field])) {
      if (written.has(name.toLowerCase())) issue([field, name], `"${name.toLowerCase()}" is written by the request signature`);
    }
  }
}

/** The request headers a signature writes (the client's are never forwarded under these names). */
function signatureHeaderNames(auth: AuthConfig): string[] {
  if (auth.type === 'aws-sigv4') return [...AWS_SIGNATURE_HEADERS];
  if (auth.type === 'hmac') return [auth.header, auth.timestampHeader, ...(auth.keyId !== undefined ? [auth.keyIdHeader] : [])];
  return [];
}

export const keywardConfigSchema = z.strictObject({
  $schema: z.string().optional(),
  upstreams: z
    .record(z.string().regex(UPSTREAM_ID, 'upstream ids are lowercase letters, digits, "-" and "_"'), upstreamSchema)
    .describe('Upstream APIs by id; called as /api/proxy/<id>/<path>.'),
});

export type UpstreamInput = z.input<typeof upstreamSchema>;
export type UpstreamConfig = z.output<typeof upstreamSchema>;
export type KeywardConfigInput = z.input<typeof keywardConfigSchema>;
export type SecretRef = z.output<typeof secretRefSchema>;
export type CredentialSource = z.output<typeof credentialSourceSchema>;
export type AuthConfig = UpstreamConfig['auth'];
export type RouteConfig = UpstreamConfig['routes'][number];

export function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(hostname);
}

/**
 * A contract is a declarative spec or (in TypeScript) a zod schema. When a declarative one is wrong, zod
 * reports "no option matched"; the declarative option's own issues name the field that is actually wrong.
 */
function declarativeIssues(issue: z.core.$ZodIssue): z.core.$ZodIssue[] {
  if (issue.code !== 'invalid_union') return [issue];
  const isZodOption = (option: readonly z.core.$ZodIssue[]) => option.some((i) => i.message === ZOD_CONTRACT_MESSAGE);
  if (!issue.errors.some(isZodOption)) return [issue];
  const declarative = issue.errors.find((option) => !isZodOption(option));
  if (!declarative || declarative.length === 0) return [issue];
  return declarative.flatMap((inner) => declarativeIssues({ ...inner, path: [...issue.path, ...inner.path] } as z.core.$ZodIssue));
}

/**
 * Formats zod issues as `path: message` lines: names the field, never echoes the value. Names in the path and
 * unknown field names are the config's own text, shown only when they could not be a pasted key (`shownName`).
 */
export function formatIssues(issues: readonly z.core.$ZodIssue[], prefix: string): string {
  return issues
    .flatMap(declarativeIssues)
    .map((issue) => {
      const path = [prefix, ...issue.path.map((part) => (typeof part === 'string' ? shownName(part) : String(part)))].filter(Boolean).join('.');
      const message =
        issue.code === 'unrecognized_keys'
          ? `unknown field${issue.keys.length > 1 ? 's' : ''}: ${issue.keys.map((key) => JSON.stringify(shownName(key))).join(', ')}`
          : issue.message;
      return `  - ${path}: ${message}`;
    })
    .join('\n');
}
