/**
 * `keyward/next`: Keyward in a Next.js App Router app (README "Add Keyward to an existing Next.js app"). The only
 * entry point that imports Next.js and Auth.js.
 */
export { createKeyward, type Keyward, type KeywardOptions } from './keyward';
export type { ApiRoutes } from './api-routes';
export { SIGN_IN_EXPIRED, SIGN_IN_UNREACHABLE, type AuthPages } from './auth';
export {
  safeCallbackPath,
  type CredentialKind,
  type PageHelpers,
  type PageSession,
  type PageSessionState,
} from './pages';
export type { RouteHandler } from './proxy-route';
