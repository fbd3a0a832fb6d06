import { ConfigError } from '../error';
import { NOT_CREDENTIAL_HEADERS, type UpstreamInput } from '../schema';
import {
  child,
  derefObject,
  expectShape,
  isObject,
  own,
  securitySchemeShape,
  specError,
  type SecurityRequirement,
  type SpecDocument,
  type SpecSecurityScheme,
} from './document';

/**
 * OpenAPI security schemes → the upstream's `auth`. Keyward attaches one credential per upstream, always from
 * the server's environment: the file only ever names the variable (`<ID>_API_KEY`…), never a value.
 */

export type AuthInput = UpstreamInput['auth'];

export interface AuthChoice {
  readonly auth: AuthInput;
  /** The environment variables to set. */
  readonly env: readonly string[];
  /** The scheme it came from (null: none usable, a placeholder was written). */
  readonly scheme: string | null;
  readonly warnings: readonly { operation: string | null; message: string }[];
}

/** What a selected operation asks for: its (or the document's) security requirements, alternatives of all-of sets. */
export interface OperationSecurity {
  readonly key: string;
  /** Where the requirements are written (the operation's `security`, or the document's). */
  readonly pointer: string;
  readonly requirements: readonly SecurityRequirement[];
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const QUERY_NAME = /^[A-Za-z0-9_.~-]{1,64}$/;

/** `petstore` → `PETSTORE`, `my-api` → `MY_API`: the start of the environment variable names. */
export function envPrefix(id: string): string {
  const name = id.toUpperCase().replace(/[^A-Z0-9_]/g, '_');
  return /^[A-Z_]/.test(name) ? name : `UPSTREAM_${name}`;
}

type Mapped = { auth: AuthInput; env: string[]; note?: string } | { reason: string };

/** One scheme as Keyward auth, or why it cannot be one. */
function mapScheme(name: string, scheme: SpecSecurityScheme, prefix: string): Mapped {
  const key = `${prefix}_API_KEY`;
  switch (scheme.type) {
    case 'apiKey': {
      const paramName = scheme.name!;
      if (scheme.in === 'header') {
        const header = paramName.toLowerCase();
        if (!HEADER_NAME.test(paramName) || NOT_CREDENTIAL_HEADERS.has(header))
          return { reason: `"${name}": header "${paramName}" cannot carry a credential` };
        return { auth: { type: 'header', name: header, secret: { env: key } }, env: [key] };
      }
      if (scheme.in === 'query') {
        if (!QUERY_NAME.test(paramName))
          return { reason: `"${name}": query parameter "${paramName}" is not a plain name` };
        return { auth: { type: 'query', name: paramName, secret: { env: key } }, env: [key] };
      }
      return { reason: `"${name}": a key sent as a cookie is not supported` };
    }
    case 'http': {
      const kind = scheme.scheme!.toLowerCase();
      if (kind === 'bearer') return { auth: { type: 'bearer', secret: { env: key } }, env: [key] };
      if (kind === 'basic') {
        const username = `${prefix}_USERNAME`;
        const password = `${prefix}_PASSWORD`;
        return {
          auth: { type: 'basic', username: { env: username }, secret: { env: password } },
          env: [username, password],
        };
      }
      return { reason: `"${name}": HTTP "${scheme.scheme}" authentication is not supported` };
    }
    case 'oauth2':
    case 'openIdConnect': {
      const token = `${prefix}_ACCESS_TOKEN`;
      return {
        auth: { type: 'bearer', secret: { env: token } },
        env: [token],
        note:
          `"${name}" is ${scheme.type === 'oauth2' ? 'OAuth 2' : 'OpenID Connect'}: Keyward sends one service token from ${token}; ` +
          'to send each caller\'s own token instead, set auth.secret to {"oauth": "oidc"} (README "Whose credential")',
      };
    }
    case 'mutualTLS':
      return { reason: `"${name}": mutual TLS is not supported` };
  }
}

type ReadScheme = { readonly scheme: SpecSecurityScheme } | { readonly reason: string };

function readSchemes(doc: SpecDocument): Map<string, ReadScheme> {
  const components = own(doc.root, 'components');
  const declared = isObject(components) ? own(components, 'securitySchemes') : undefined;
  const schemes = new Map<string, ReadScheme>();
  if (!isObject(declared)) return schemes;
  for (const [name, value] of Object.entries(declared)) {
    const at = child('#/components/securitySchemes', name);
    const resolved = derefObject(doc, value, at);
    if ('external' in resolved) schemes.set(name, { reason: `"${name}" is in another file ("${resolved.external}")` });
    else schemes.set(name, { scheme: expectShape(securitySchemeShape, resolved.value, resolved.pointer) });
  }
  return schemes;
}

/**
 * Picks the one scheme to attach for the selected operations: `preferred` (--auth) if given; else the usable
 * scheme the most operations accept alone (a requirement naming several schemes at once cannot be met with
 * one credential), a key or HTTP scheme before OAuth on a tie, then the document's order.
 */
export function chooseAuth(
  doc: SpecDocument,
  operations: readonly OperationSecurity[],
  id: string,
  preferred?: string,
): AuthChoice {
  const prefix = envPrefix(id);
  const schemes = readSchemes(doc);
  const mapped = new Map<string, Mapped>();
  for (const [name, read] of schemes) mapped.set(name, 'reason' in read ? read : mapScheme(name, read.scheme, prefix));
  const secured = operations.filter(
    (op) => op.requirements.length > 0 && !op.requirements.some((r) => Object.keys(r).length === 0),
  );
  const accepts = (op: OperationSecurity, name: string) =>
    op.requirements.some((r) => Object.keys(r).length === 1 && Object.hasOwn(r, name));
  for (const op of secured) {
    for (const name of op.requirements.flatMap((requirement) => Object.keys(requirement))) {
      if (!schemes.has(name))
        throw specError(
          op.pointer,
          `names the security scheme "${name}", which components.securitySchemes does not declare`,
        );
    }
  }

  let chosen: string | null = null;
  if (preferred !== undefined) {
    const entry = mapped.get(preferred);
    if (!entry)
      throw new ConfigError(
        `--auth: the document declares no security scheme "${preferred}" (it declares: ${[...schemes.keys()].join(', ') || 'none'})`,
      );
    if ('reason' in entry) throw new ConfigError(`--auth: ${entry.reason}`);
    chosen = preferred;
  } else {
    const rank = (name: string) => {
      const read = schemes.get(name);
      return read && 'scheme' in read && (read.scheme.type === 'oauth2' || read.scheme.type === 'openIdConnect')
        ? 1
        : 0;
    };
    const usable = [...mapped.entries()].filter(([, entry]) => !('reason' in entry)).map(([name]) => name);
    const scored = usable
      .map((name, order) => ({ name, order, count: secured.filter((op) => accepts(op, name)).length }))
      .filter((candidate) => candidate.count > 0)
      .sort((a, b) => b.count - a.count || rank(a.name) - rank(b.name) || a.order - b.order);
    chosen = scored[0]?.name ?? null;
  }

  const warnings: { operation: string | null; message: string }[] = [];
  if (chosen === null) {
    const key = `${prefix}_API_KEY`;
    const unusable = [...mapped.values()].flatMap((entry) => ('reason' in entry ? [entry.reason] : []));
    const why =
      secured.length === 0
        ? 'the selected operations declare no security'
        : `no security scheme they use can be attached (${unusable.join('; ') || 'none declared'})`;
    warnings.push({
      operation: null,
      message: `${why}: wrote a placeholder, a bearer token from ${key}; Keyward always attaches a credential, so set it, or edit "auth" (README "Configuration")`,
    });
    return { auth: { type: 'bearer', secret: { env: key } }, env: [key], scheme: null, warnings };
  }
  const entry = mapped.get(chosen) as Exclude<Mapped, { reason: string }>;
  if (entry.note) warnings.push({ operation: null, message: entry.note });
  for (const op of secured) {
    if (accepts(op, chosen)) continue;
    const asked = op.requirements.map((r) => Object.keys(r).join(' + ')).join(' or ');
    warnings.push({
      operation: op.key,
      message: `asks for ${asked}; Keyward attaches "${chosen}" to every route of this upstream`,
    });
  }
  return { auth: entry.auth, env: entry.env, scheme: chosen, warnings };
}
