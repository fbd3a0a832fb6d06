import { z } from 'zod';
import { isLoopbackHost, secretRefSchema } from '../config/schema';

/**
 * Connected accounts (README "Connected accounts"): OAuth 2.0 providers a signed-in user links to their account,
 * separate from sign-in. The `connections` object of the JSON config, or `createKeyward({ connections })`; each
 * entry is a preset with the client's credentials, and the id is what upstreams name in `{"oauth": "<id>"}`.
 */

export const CONNECTION_PRESETS = ['github', 'google', 'slack', 'microsoft', 'generic'] as const;
export type ConnectionPreset = (typeof CONNECTION_PRESETS)[number];

/** Provider ids as `{"oauth": "<id>"}` takes them; "oidc" is the sign-in provider and "credentials" Auth.js's. */
export const CONNECTION_ID = /^[a-z0-9-]{1,32}$/;
const RESERVED_IDS = new Set(['oidc', 'credentials']);

/** A scope token (RFC 6749 §3.3): printable ASCII without space, `"` or `\`. */
export const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]{1,256}$/;
const scopeSchema = z
  .string()
  .regex(SCOPE_TOKEN, 'must be one OAuth scope (printable ASCII, no spaces, quotes or backslashes)');

/** Parameters Keyward writes itself: a configured one could weaken the flow (PKCE, state) or send the user elsewhere. */
export const RESERVED_AUTHORIZATION_PARAMS = new Set([
  'client_id',
  'redirect_uri',
  'response_type',
  'response_mode',
  'scope',
  'user_scope',
  'state',
  'nonce',
  'code_challenge',
  'code_challenge_method',
  'request',
  'request_uri',
]);

const endpointSchema = z
  .url({ protocol: /^https?$/, error: 'must be an absolute https URL' })
  // zod runs refinements after a failed format check too: a value that is no URL is that check's to name.
  .refine((value) => {
    const url = URL.parse(value);
    return url === null || url.protocol === 'https:' || isLoopbackHost(url.hostname);
  }, 'must be https (plain http only on a loopback address)')
  .refine((value) => {
    const url = URL.parse(value);
    return url === null || (!url.username && !url.password && !url.hash);
  }, 'must not carry credentials or a fragment');

export const connectionSchema = z
  .strictObject({
    preset: z
      .enum(CONNECTION_PRESETS)
      .describe(
        '"github", "google", "slack", "microsoft" (their endpoints and quirks built in), or "generic" (any OAuth 2.0 / OIDC server).',
      ),
    name: z
      .string()
      .min(1)
      .max(64)
      .optional()
      .describe('Shown to users ("Connect GitHub"). Default: the preset\'s name, or the id.'),
    clientId: secretRefSchema.describe('The OAuth client id, from the environment ({"env": "NAME"}).'),
    clientSecret: secretRefSchema
      .optional()
      .describe(
        'The client secret, from the environment. Required unless clientAuth is "none" (a public client, with PKCE).',
      ),
    scopes: z
      .array(scopeSchema)
      .max(64)
      .optional()
      .describe("Scopes asked for at every connect. Default: the preset's."),
    optionalScopes: z
      .array(scopeSchema)
      .max(64)
      .default([])
      .describe(
        'More scopes a user may add on reconnect (`/api/connect/<id>?scope=…`, incremental consent); no others are accepted.',
      ),
    issuer: endpointSchema
      .optional()
      .describe('generic: the issuer, whose discovery document (OIDC or RFC 8414) names the endpoints.'),
    authorizationUrl: endpointSchema
      .optional()
      .describe("The authorization endpoint (generic without issuer; or overrides a preset's)."),
    tokenUrl: endpointSchema
      .optional()
      .describe("The token endpoint (generic without issuer; or overrides a preset's)."),
    revocationUrl: endpointSchema
      .optional()
      .describe(
        "An RFC 7009 revocation endpoint, called on disconnect (overrides a preset's way of revoking, or discovery's).",
      ),
    pkce: z
      .boolean()
      .optional()
      .describe("Send a PKCE S256 challenge (RFC 7636). Default: the preset's; generic: true."),
    clientAuth: z
      .enum(['client_secret_basic', 'client_secret_post', 'none'])
      .optional()
      .describe(
        "How the client authenticates at the token endpoint. Default: the preset's; generic: client_secret_basic.",
      ),
    tenant: z
      .string()
      .regex(/^[A-Za-z0-9.-]{1,64}$/, 'must be a tenant id or domain, "common", "organizations" or "consumers"')
      .optional()
      .describe('microsoft: the Entra ID tenant (default "common").'),
    authorizationParams: z
      .record(
        z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'must be a plain parameter name'),
        z
          .string()
          .max(256)
          .regex(/^[\x20-\x7e]*$/),
      )
      .optional()
      .describe(
        'Extra authorization request parameters (e.g. {"prompt": "consent"}); they replace the preset\'s of the same name.',
      ),
  })
  .superRefine((entry, ctx) => {
    if (entry.preset === 'generic' && !entry.issuer && !(entry.authorizationUrl && entry.tokenUrl)) {
      ctx.addIssue({
        code: 'custom',
        path: ['issuer'],
        message: 'a generic provider needs an issuer (discovery) or both authorizationUrl and tokenUrl',
      });
    }
    if (entry.preset !== 'generic') {
      for (const field of ['issuer', 'pkce', 'clientAuth'] as const) {
        if (entry[field] !== undefined)
          ctx.addIssue({
            code: 'custom',
            path: [field],
            message: `applies to the generic preset only (the "${entry.preset}" preset sets it)`,
          });
      }
    }
    if (entry.tenant !== undefined && entry.preset !== 'microsoft') {
      ctx.addIssue({ code: 'custom', path: ['tenant'], message: 'applies to the microsoft preset only' });
    }
    if (!entry.clientSecret && entry.clientAuth !== 'none') {
      ctx.addIssue({
        code: 'custom',
        path: ['clientSecret'],
        message: 'must be set (or clientAuth "none" for a public client)',
      });
    }
    if (entry.clientAuth === 'none' && entry.pkce === false) {
      ctx.addIssue({ code: 'custom', path: ['pkce'], message: 'a public client (clientAuth "none") must use PKCE' });
    }
    for (const name of Object.keys(entry.authorizationParams ?? {})) {
      if (RESERVED_AUTHORIZATION_PARAMS.has(name.toLowerCase())) {
        ctx.addIssue({
          code: 'custom',
          path: ['authorizationParams', name],
          message: 'is written by Keyward and cannot be configured',
        });
      }
    }
  });

export const connectionsSchema = z
  .record(z.string(), connectionSchema)
  // Checked here rather than by the key schema: zod reports a bad record key without saying why.
  .superRefine((connections, ctx) => {
    for (const id of Object.keys(connections)) {
      if (!CONNECTION_ID.test(id))
        ctx.addIssue({
          code: 'custom',
          path: [id],
          message: 'connection ids are 1–32 lowercase letters, digits and "-"',
        });
      else if (RESERVED_IDS.has(id))
        ctx.addIssue({ code: 'custom', path: [id], message: '"oidc" and "credentials" name the sign-in providers' });
    }
  })
  .describe(
    'OAuth providers users connect their accounts to (README "Connected accounts"); upstreams use them with {"oauth": "<id>"}.',
  );

export type ConnectionInput = z.input<typeof connectionSchema>;
export type ConnectionConfig = z.output<typeof connectionSchema>;
export type ConnectionsInput = z.input<typeof connectionsSchema>;
export type ConnectionsConfig = z.output<typeof connectionsSchema>;
