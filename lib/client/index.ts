/**
 * Keyward's typed frontend client (README "Call it from the frontend: the typed client"). Browser-safe: no
 * `server-only`, no Node built-ins, and only type imports from lib/core, so client components, React Native and
 * Node scripts can all import it.
 */
export { createKeywardClient } from './client';
export { CSRF_HEADER, createKeywardFetch, keywardFetch, type KeywardClientOptions, type KeywardFetch } from './fetch';
export { KeywardError, UpstreamError, parseRetryAfter } from './errors';
export type {
  AnyApi,
  AnyRoutes,
  ApiOf,
  ApiShape,
  CallOptions,
  ContractType,
  KeywardClient,
  LooseQuery,
  ParamValue,
  PathParams,
  QueryValue,
  RequestOptions,
  RestValue,
  RouteTable,
  RouteTypes,
  ServerSentEvent,
  SpecType,
  UpstreamClient,
} from './types';
