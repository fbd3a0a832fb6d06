import type { z } from 'zod';
import type { UpstreamDefinition } from '../core/config/load';
import type { RouteMethod } from '../core/config/schema';

/**
 * The typed client's types, computed from the upstream definitions by inference (the tRPC habit: no code
 * generation for TypeScript adapters) or read from the `.d.ts` that `npm run keyward -- types` writes for the
 * JSON config. Type-only imports: nothing here reaches a bundle.
 */

/** What the client knows of one route: the query and body it sends, the JSON it gets back. */
export interface RouteTypes {
  readonly query: unknown;
  readonly body: unknown;
  readonly response: unknown;
}

/** An upstream's routes by `"METHOD /path"` (the template as declared, e.g. `"GET /items/:id"`). */
export type RouteTable = { readonly [route: string]: RouteTypes };

/** Upstream id → its routes: what `ApiOf` derives and what the generated `KeywardApi` declares. */
export type ApiShape = { readonly [upstream: string]: RouteTable };

/** Methods Keyward forwards without a body (a body contract on them is a config error). */
type BodylessMethod = 'GET' | 'HEAD' | 'DELETE' | 'OPTIONS';

/** Any route of an upstream whose routes TypeScript cannot see: any path, query and body; response unknown. */
export type AnyRoutes = {
  readonly [route: `${BodylessMethod} /${string}`]: { readonly query: unknown; readonly body: never; readonly response: unknown };
} & {
  readonly [route: `${Exclude<RouteMethod, BodylessMethod>} /${string}`]: { readonly query: unknown; readonly body: unknown; readonly response: unknown };
};

/** Any upstream id, with `AnyRoutes`: the client's type when it is given no type argument. */
export type AnyApi = { readonly [upstream: string]: AnyRoutes };

// ---- From definitions (TypeScript adapters) ------------------------------------------------------------------

/**
 * The API of `U`: a list of definitions (`typeof upstreams`), a record of them (`{ openai, demo }`), or an API
 * shape already (the generated `KeywardApi`, or an intersection of shapes), returned as it is.
 */
export type ApiOf<U> = U extends readonly unknown[]
  ? ApiOfDefinitions<U[number]>
  : [U[keyof U]] extends [UpstreamDefinition]
    ? ApiOfDefinitions<U[keyof U]>
    : U;

/**
 * Definitions whose id TypeScript sees as a literal are typed; one typed as plain `UpstreamDefinition` (an
 * annotation, a preset without route types) cannot be, and is left out; if none can be, any upstream is allowed.
 */
type ApiOfDefinitions<D> = [LiteralId<D>] extends [never]
  ? AnyApi
  : { readonly [E in D as LiteralId<E>]: E extends { readonly '~routes'?: infer R } ? RoutesOf<R> : AnyRoutes };

type LiteralId<D> = D extends { readonly id: infer Id extends string } ? (string extends Id ? never : Id) : never;

/** A route list with literal methods and paths becomes a table; a list TypeScript cannot see is `AnyRoutes`. */
type RoutesOf<R> = R extends readonly (infer Route)[] ? ([RouteKey<Route>] extends [never] ? AnyRoutes : RouteTableOf<Route>) : AnyRoutes;

type RouteTableOf<Route> = { readonly [E in Route as RouteKey<E>]: RouteTypesOf<E> };

type RouteKey<E> = E extends { readonly method: infer M extends string; readonly path: infer P extends string }
  ? string extends P
    ? never
    : `${M} ${P}`
  : never;

/** A route's types: stated outright (`TypedRoute`), or read from its contracts. */
type RouteTypesOf<E> = '~types' extends keyof E
  ? E extends { readonly '~types'?: infer T extends RouteTypes }
    ? { readonly query: T['query']; readonly body: BodyFor<E, T['body']>; readonly response: T['response'] }
    : never
  : {
      readonly query: QueryOf<E>;
      readonly body: BodyFor<E, FormatBody<E>>;
      readonly response: ContractType<FieldOf<E, 'response'>>;
    };

type FieldOf<E, K extends string> = K extends keyof E ? E[K] : undefined;

/**
 * The query contract's type; with none, any query, unless a body contract closes it (lib/core/policy/contract.ts:
 * servers merge the two), which leaves none. (An `aws-sigv4` upstream closes every route's query too; its routes'
 * types do not know the upstream's auth, so only `npm run keyward -- types` says so.)
 */
type QueryOf<E> = [FieldOf<E, 'query'>] extends [undefined]
  ? [FieldOf<E, 'body'>] extends [undefined]
    ? unknown
    : never
  : ContractType<FieldOf<E, 'query'>>;

type BodyFor<E, Body> = E extends { readonly method: BodylessMethod } ? never : Body;

/** Form and multipart routes (`bodyFormat`) take the browser's own body objects; JSON routes the contract's type. */
type FormatBody<E> = E extends { readonly bodyFormat: 'form' }
  ? URLSearchParams
  : E extends { readonly bodyFormat: 'multipart' }
    ? FormData
    : ContractType<FieldOf<E, 'body'>>;

/**
 * A contract's type: `z.input` of a zod schema (what the client sends, or the JSON as the upstream sent it: a
 * response schema is never applied, so its transforms and defaults are not either), the TypeScript reading of a
 * declarative spec, or `unknown` with no contract.
 */
export type ContractType<C> = [C] extends [undefined] ? unknown : C extends z.core.$ZodType ? z.input<C> : SpecType<C>;

/**
 * A declarative field spec (the JSON config's contract language, lib/core/config/policy.ts) as a TypeScript type.
 * Objects are closed, like the contract: an undeclared field is a compile error as it is a 400.
 * `npm run keyward -- types` renders the same mapping as text (scripts/client-types.ts).
 */
export type SpecType<S> = S extends { readonly enum: readonly (infer V)[] }
  ? V
  : S extends { readonly type: 'string' }
    ? string
    : S extends { readonly type: 'integer' | 'number' }
      ? number
      : S extends { readonly type: 'boolean' }
        ? boolean
        : S extends { readonly type: 'file' }
          ? Blob
          : S extends { readonly type: 'array'; readonly items: infer I }
            ? SpecType<I>[]
            : S extends { readonly type: 'object' } | { readonly properties: object }
              ? ObjectSpecType<S>
              : unknown;

type ObjectSpecType<S> = S extends { readonly properties: infer P }
  ? Flatten<
      { -readonly [K in keyof P as K extends RequiredOf<S> ? K : never]: SpecType<P[K]> } & {
        -readonly [K in keyof P as K extends RequiredOf<S> ? never : K]?: SpecType<P[K]>;
      }
    >
  : Record<string, never>;

type RequiredOf<S> = S extends { readonly required: readonly (infer R)[] } ? R : never;

type Flatten<T> = { [K in keyof T]: T[K] } & {};

// ---- Calls ----------------------------------------------------------------------------------------------------

/** The methods an upstream's table declares, e.g. `'GET' | 'POST'`. */
export type MethodsOf<R> = keyof R extends infer K ? (K extends `${infer M extends RouteMethod} ${string}` ? M : never) : never;

/** The path templates declared for `M`. */
export type PathsOf<R, M extends string> = keyof R extends infer K ? (K extends `${M} ${infer P}` ? P : never) : never;

type RouteAt<R, M extends string, P extends string> = `${M} ${P}` extends keyof R
  ? R[`${M} ${P}`] extends infer T extends RouteTypes
    ? T
    : never
  : never;

/** A path parameter's value: one segment, percent-encoded by the client. */
export type ParamValue = string | number;
/** The final `*`: more segments, as `"a/b/c"` (split on "/") or `["a", "b", "c"]`. */
export type RestValue = string | readonly string[];

type TemplateSegments<P extends string> = P extends `/${infer Rest}` ? SplitSegments<Rest> : never;
type SplitSegments<S extends string> = S extends `${infer Head}/${infer Tail}` ? Head | SplitSegments<Tail> : S;

/**
 * `:name` (a whole segment), `{name}`, `{name:colon}` or `{name:int}` (with literal text around it), and the final
 * `*`. An int parameter takes a `ParamValue` too: a number, or a string of its digits (checked when the call is made).
 */
type ParamName<Segment> = Segment extends `:${infer Name}`
  ? Name
  : Segment extends `${string}{${infer Inner}}${string}`
    ? Inner extends `${infer Name}:colon`
      ? Name
      : Inner extends `${infer Name}:int`
        ? Name
        : Inner
    : Segment extends '*'
      ? '*'
      : never;

/** The parameters of a path template, e.g. `{ id: ParamValue }` for `/items/:id`. */
export type PathParams<P extends string> = { [K in ParamName<TemplateSegments<P>>]: K extends '*' ? RestValue : ParamValue };

/** Query values: arrays repeat the parameter (`?tag=a&tag=b`). */
export type QueryValue = string | number | boolean;
export type LooseQuery = URLSearchParams | { readonly [name: string]: QueryValue | readonly QueryValue[] | null | undefined };

type ParamsOption<P extends string> = [keyof PathParams<P>] extends [never]
  ? { readonly params?: Record<string, never> }
  : { readonly params: PathParams<P> };

// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- `{}`, no property at all, fits T when T requires none
type NothingRequired<T> = {} extends T ? true : false;

/** `never`: no query (a stated route type); `unknown`: no contract, any query; else the contract's type. */
type QueryOption<Q> = [Q] extends [never]
  ? { readonly query?: undefined }
  : unknown extends Q
    ? { readonly query?: LooseQuery }
    : NothingRequired<Q> extends true
      ? { readonly query?: Q }
      : { readonly query: Q };

type BodyOption<B> = [B] extends [never]
  ? { readonly body?: undefined }
  : unknown extends B
    ? { readonly body?: unknown }
    : undefined extends B
      ? { readonly body?: B }
      : { readonly body: B };

/** Options every call takes. */
export interface RequestOptions {
  /** More request headers for this call (Keyward forwards only its allow-list and the upstream's `requestHeaders`). */
  readonly headers?: HeadersInit;
  /** Aborts the call; for `sse`, also the stream (the loop then throws the abort reason). */
  readonly signal?: AbortSignal | null;
}

/** A call's options: `params` for the path's parameters, `query` and `body` as the route's contracts say. */
export type CallOptions<T extends RouteTypes, P extends string> = ParamsOption<P> & QueryOption<T['query']> & BodyOption<T['body']> & RequestOptions;

/** The options argument, optional when nothing in it is required. */
export type CallArgs<T extends RouteTypes, P extends string> =
  NothingRequired<CallOptions<T, P>> extends true ? [options?: CallOptions<T, P>] : [options: CallOptions<T, P>];

/** One Server-Sent Event (HTML Living Standard §9.2). */
export interface ServerSentEvent {
  /** The `event` field; `"message"` when the event has none, as in browsers' EventSource. */
  readonly event: string;
  /** The `data` lines, joined with "\n". */
  readonly data: string;
  /** The event's `id` field, when it has one. */
  readonly id: string | undefined;
}

/** One method of an upstream, e.g. `kw.demo.get('/items/:id', { params: { id } })`: resolves with the parsed answer. */
type MethodCall<R, M extends string> = <P extends PathsOf<R, M>>(path: P, ...options: CallArgs<RouteAt<R, M, P>, P>) => Promise<RouteAt<R, M, P>['response']>;

/** What `kw.<upstream>` offers: one function per declared method, plus `request`, `raw` and `sse`. */
export type UpstreamClient<R> = { readonly [M in MethodsOf<R> as Lowercase<M>]: MethodCall<R, M> } & {
  /** Any declared method: resolves with the parsed answer (JSON, text, or undefined for no content). */
  request<M extends MethodsOf<R>, P extends PathsOf<R, M>>(method: M, path: P, ...options: CallArgs<RouteAt<R, M, P>, P>): Promise<RouteAt<R, M, P>['response']>;
  /** The `Response` itself (2xx; errors are thrown as for the other calls), for downloads and other bodies. */
  raw<M extends MethodsOf<R>, P extends PathsOf<R, M>>(method: M, path: P, ...options: CallArgs<RouteAt<R, M, P>, P>): Promise<Response>;
  /**
   * A `text/event-stream` answer as an async iterator of events, each as it arrives. The call starts on the first
   * iteration; leaving the loop (`break`, `return`, a throw) cancels the body, and Keyward then cancels the
   * upstream call.
   */
  sse<M extends MethodsOf<R>, P extends PathsOf<R, M>>(method: M, path: P, ...options: CallArgs<RouteAt<R, M, P>, P>): AsyncGenerator<ServerSentEvent, void, undefined>;
};

/**
 * The typed client: `kw.<upstream id>.<method>(path, options)`. An upstream called `then` is not offered: a client
 * with a `then` would pass for a promise when returned from an async function (reach it with `keywardFetch`).
 */
export type KeywardClient<Api> = { readonly [Id in Exclude<keyof Api & string, 'then'>]: UpstreamClient<Api[Id]> };
