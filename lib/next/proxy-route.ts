import 'server-only';
import { after } from 'next/server';
import { KeywardError, errorResponse } from '@/lib/core/errors';
import { proxyCall, toWebResponse, type ProxiedResponse } from '@/lib/core/pipeline';
import { getLogger } from '@/lib/core/log/logger';
import type { CoreRequest } from '@/lib/core/request';
import type { ProxiedBody } from '@/lib/core/respond/body';
import type { Runtime } from '@/lib/core/runtime';
import { processServingCalls } from '@/lib/core/shutdown';

/** How a route handler gets its runtime: built once, on first use (lib/next/runtime.ts). */
export type RuntimeSource = () => Runtime;

/** A Next.js App Router route handler: the request, and the dynamic segments as a promise. */
export type RouteHandler<P = object> = (request: Request, context: { params: Promise<P> }) => Promise<Response>;

/**
 * Returns the runtime, or a 503 response when the configuration cannot be loaded: fail closed, never
 * "let it through". The ConfigError (which names fields, never values) goes to the log only.
 */
export function runtimeOrUnavailable(getRuntime: RuntimeSource): Runtime | Response {
  try {
    return getRuntime();
  } catch (error) {
    getLogger().error({ err: error }, 'keyward configuration failed to load');
    return errorResponse(new KeywardError('service_unavailable'), crypto.randomUUID());
  }
}

/**
 * The Next.js route handler for /api/proxy/[upstream]/[[...path]]: translate, then hand over to the core.
 * Authentication happens inside handleProxy on every request; nothing relies on proxy.ts/middleware.
 *
 * Each call is on record before the server goes (README "Audit trail"): its record is made when its body ends
 * or is cut, and written with the next batch (lib/core/audit/audit.ts), which `after()` has Next wait for
 * (`next start` awaits it before it exits on SIGTERM; Vercel holds the function for it, `waitUntil`). Each call
 * is also tracked (lib/core/shutdown.ts), so that a stop cuts the ones still open after its drain:
 * `keyward.register()` listens for the signal.
 */
export function createProxyRoute(getRuntime: RuntimeSource): RouteHandler<{ upstream: string; path?: string[] }> {
  return async (request, context) => {
    const runtime = runtimeOrUnavailable(getRuntime);
    if (runtime instanceof Response) return runtime;
    const { upstream, path = [] } = await context.params;
    const served = new ServedCall(request, runtime);
    processServingCalls().track(served.written, () => served.cut());
    holdUntil(served.written);
    let answer: Response | ProxiedResponse | undefined;
    try {
      answer = await proxyCall(served.request, { upstream, path }, runtime);
    } finally {
      served.answered(answer && !(answer instanceof Response) ? answer.body : null);
    }
    return served.stoppedBeforeAnswer ? cutConnection() : toWebResponse(answer);
  };
}

/**
 * One call as a stop sees it. Until it has an answer, cutting it aborts its request's signal (a call waiting for
 * its upstream's answer is refused as aborted); then cutting it cuts the body (recorded as aborted, the client's
 * response ended). `written` resolves once its record is written: at once for an answer without a body (a
 * refusal: its record is made), else once the body ended or was cut.
 */
class ServedCall {
  private readonly stop = new AbortController();
  private body: ProxiedBody | null | undefined = undefined;
  private answer!: (body: ProxiedBody | null) => void;
  /** Cut by a stop while it waited for its answer: its refusal ("the client closed the request") is not for the client. */
  stoppedBeforeAnswer = false;
  readonly request: CoreRequest;
  readonly written: Promise<void>;

  constructor(request: Request, runtime: Runtime) {
    // The client going away aborts the call, as before; so does a stop.
    request.signal.addEventListener('abort', () => this.stop.abort(request.signal.reason), { once: true });
    this.request = {
      method: request.method,
      url: request.url,
      headers: request.headers,
      // Read when the core reads it, as the Request's own.
      get body() {
        return request.body;
      },
      signal: this.stop.signal,
    };
    this.written = new Promise<ProxiedBody | null>((resolve) => (this.answer = resolve))
      .then((body) => body?.ended())
      .then(() => runtime.audit.written());
  }

  /** The call was answered: with `body` to stream, or in full (null). A cut meanwhile cuts the body now. */
  answered(body: ProxiedBody | null): void {
    this.body = body;
    if (this.stop.signal.aborted) body?.cut();
    this.answer(body);
  }

  cut(): void {
    if (this.body) this.body.cut();
    else if (this.body === undefined && !this.stop.signal.aborted) {
      this.stoppedBeforeAnswer = true;
      this.stop.abort(stopping());
    }
  }
}

function stopping(): DOMException {
  return new DOMException('The call was cut: the server is stopping.', 'AbortError');
}

/**
 * An answer whose body fails before its first byte, with an abort: Next then destroys the connection without
 * writing anything (and logs nothing), so the client sees it cut, as the fast lane's stop cuts it.
 */
function cutConnection(): Response {
  return new Response(new ReadableStream({ start: (controller) => controller.error(stopping()) }));
}

/**
 * Has Next wait for `work` before the process (`next start`: on SIGTERM, `nextServer.close()` awaits it) or the
 * function (Vercel: `waitUntil`) ends: `after()`, which runs nothing now and costs no store write. Outside a
 * request scope (a handler called directly, as tests and scripts do) or on a host that offers no `waitUntil`,
 * `after()` throws: the record then goes with the next batch, as any other, with nothing holding the process.
 */
function holdUntil(work: Promise<void>): void {
  try {
    after(work);
  } catch {
    // nothing to hold here (above)
  }
}
