import 'server-only';
import type { UpstreamDefinition } from '@/lib/core/config/load';
import type { ConnectionsInput } from '@/lib/core/connect/config';
import type { Runtime } from '@/lib/core/runtime';
import { scrubConsole } from '@/lib/core/log/console';
import { registerTracingFromEnv } from '@/lib/core/observe/trace';
import { cutCallsOnStop } from '@/lib/core/shutdown';
import { checkStartup } from '@/lib/core/startup';
import { createApiRoutes, type ApiRoutes } from './api-routes';
import type { AuthPages } from './auth';
import { everyMethod } from './methods';
import { createPageHelpers, type PageHelpers } from './pages';
import { createProxyRoute, type RouteHandler } from './proxy-route';
import { lazyRuntime } from './runtime';
import { createSessionRoute } from './session-route';

export interface KeywardOptions {
  /**
   * Upstreams declared in TypeScript (`defineUpstream`, presets); merged with the JSON file named by
   * KEYWARD_CONFIG (or KEYWARD_CONFIG_JSON). Default: none, the JSON only.
   */
  readonly upstreams?: readonly UpstreamDefinition[];
  /** Auth.js's pages, e.g. `{ signIn: '/signin' }` for a sign-in page of the app's own. Default: Auth.js's built-in pages. */
  readonly pages?: AuthPages;
  /** Connected-account providers (README "Connected accounts"), with the config file's `connections`. Default: none. */
  readonly connections?: ConnectionsInput;
}

/** Everything an app's route handlers, pages and instrumentation.ts take from Keyward, all on one runtime. */
export interface Keyward extends ApiRoutes, PageHelpers {
  /** /api/proxy/[upstream]/[[...path]], for every method. */
  readonly proxyRoute: RouteHandler<{ upstream: string; path?: string[] }>;
  /** GET /api/session. */
  readonly sessionRoute: (request: Request) => Promise<Response>;
  /** Builds the runtime now; an invalid configuration exits 1 naming the field. */
  checkStartup(): void;
  /**
   * For instrumentation.ts's `register()`: OpenTelemetry tracing when an OTLP endpoint is set (README "Metrics and
   * traces"; without one the SDK is not even loaded), then `checkStartup()`, then the log scrubber over `console`
   * (what Next.js prints: lib/core/log/console.ts), then the connected accounts' keeper (idle grants refreshed at
   * least daily; one pass per interval across instances). Under a Node.js server of its own (`next start`,
   * standalone; not on Vercel), a stop (SIGTERM, SIGINT) then cuts the proxied calls still open after a drain of
   * 3 s, so that the server can close and every call is on record (lib/core/shutdown.ts).
   */
  register(): Promise<void>;
  /** The runtime behind these handlers, built on first use from process.env and `upstreams`. */
  getRuntime(): Runtime;
  /**
   * A route file's every method (lib/next/methods.ts): `export const { GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS } =
   * keyward.everyMethod(keyward.logoutRoute)`, so a method the endpoint does not take gets Keyward's JSON 405.
   */
  readonly everyMethod: typeof everyMethod;
}

/**
 * Keyward for a Next.js app: call it once, in a module of the app's own (`keyward.ts`, README "Add Keyward to an
 * existing Next.js app"), and export its handlers from the app's route files. The configuration is the app's to
 * pass in, so the library never imports a file of the app. Each server bundle that imports that module gets its
 * own runtime (lib/next/runtime.ts says why); they share state through the store.
 */
export function createKeyward(options: KeywardOptions = {}): Keyward {
  const getRuntime = lazyRuntime(options.upstreams ?? [], { connections: options.connections });
  return {
    ...createApiRoutes(getRuntime, options.pages),
    ...createPageHelpers(getRuntime),
    proxyRoute: createProxyRoute(getRuntime),
    sessionRoute: createSessionRoute(getRuntime),
    checkStartup: () => checkStartup(getRuntime),
    async register() {
      await registerTracingFromEnv(process.env);
      checkStartup(getRuntime);
      scrubConsole();
      getRuntime().connectionKeeper?.start();
      // On Vercel no signal comes: the platform ends a function once its `after()` work is done.
      if (process.env.NEXT_RUNTIME === 'nodejs' && !getRuntime().settings.VERCEL) cutCallsOnStop();
    },
    getRuntime,
    everyMethod,
  };
}
