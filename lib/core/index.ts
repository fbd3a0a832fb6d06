/**
 * `keyward/core`: the framework-free core (DESIGN.md), for upstreams declared in TypeScript and for servers of
 * one's own: the config loader, the pipeline on a standard Request, the runtime, errors, password hashes, and the
 * span processor that keeps URL queries out of an app's own OpenTelemetry provider.
 */
export {
  ConfigError,
  defineUpstream,
  parseConfig,
  readConfigFile,
  readConfigJson,
  withRouteTypes,
  type TypedRoute,
  type UpstreamDefinition,
} from './config/load';
export type { KeywardConfigInput, RouteMethod, UpstreamConfig, UpstreamInput } from './config/schema';
export type { ConnectionInput, ConnectionsInput } from './connect/config';
export { ERROR_STATUS, KeywardError, errorResponse, toKeywardError, type KeywardErrorCode } from './errors';
export { QueryStrippingProcessor } from './observe/query-stripping';
export { handleProxy, type ProxyDeps, type ProxyEvent, type ProxyTarget } from './pipeline';
export type { CoreRequest } from './request';
export { PROXIED_CONTENT_SECURITY_POLICY, PROXIED_PATHS_SOURCE } from './respond/content-policy';
export { createRuntime, type Runtime, type RuntimeOptions } from './runtime';
export { checkStartup, checkStartupImport } from './startup';
export { hashPassword } from './users/password';
