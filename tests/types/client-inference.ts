/**
 * Type test for the typed client (lib/client): compiled by `npm run typecheck` (tsconfig.json includes it) and by
 * tests/unit/client/type-fixtures.test.ts; never run. Every `@ts-expect-error` line must be an error: if inference
 * stops catching a wrong path, method, parameter or body field, the directive is unused and the build fails.
 */
import { expectTypeOf } from 'vitest';
import { z } from 'zod';
import { defineUpstream, withRouteTypes, type TypedRoute, type UpstreamDefinition } from '../../lib/core/config/load';
import { createKeywardClient, type AnyRoutes, type ApiOf, type ServerSentEvent, type UpstreamClient } from '../../lib/client';

const item = z.object({ id: z.string(), name: z.string(), tags: z.array(z.string()).optional() });

const demo = defineUpstream('demo', {
  baseUrl: 'https://api.example.com/v1/',
  auth: { type: 'header', name: 'x-api-key', secret: { env: 'DEMO_KEY' } },
  routes: [
    { method: 'GET', path: '/items/:id', response: item },
    { method: 'DELETE', path: '/items/:id' },
    { method: 'POST', path: '/items', body: z.object({ name: z.string(), tags: z.array(z.string()).optional() }), response: item },
    {
      method: 'POST',
      path: '/notes',
      body: {
        type: 'object',
        required: ['text'],
        properties: {
          text: { type: 'string', maxLength: 200 },
          priority: { type: 'string', enum: ['low', 'high'] },
          tags: { type: 'array', items: { type: 'string' } },
          meta: { type: 'object', properties: { pinned: { type: 'boolean' } } },
        },
      },
      response: { type: 'object', required: ['id'], properties: { id: { type: 'integer' } } },
    },
    {
      method: 'GET',
      path: '/search',
      query: { required: ['q'], properties: { q: { type: 'string' }, limit: { type: 'integer' }, tag: { type: 'array', items: { type: 'string' } } } },
    },
    { method: 'GET', path: '/files/*' },
    { method: 'POST', path: '/models/{model}:generate' },
    { method: 'GET', path: '/issues/{number:int}' },
    { method: 'GET', path: '/reports/v{version:int}.json' },
    { method: 'GET', path: '/events' },
  ],
});

const other = defineUpstream('other', {
  baseUrl: 'https://other.example.com/',
  auth: { type: 'bearer', secret: { env: 'OTHER_KEY' } },
  routes: [{ method: 'PUT', path: '/things/:kind/:id', query: z.object({ dryRun: z.enum(['true', 'false']).optional() }) }],
});

type ChatBody = { model: string; messages: { role: 'user' | 'assistant'; content: string }[] };
type ChatAnswer = { choices: { message: { content: string } }[] };
type PresetRoutes = readonly [TypedRoute<'POST', '/chat/completions', ChatBody, never, ChatAnswer>, TypedRoute<'GET', '/models'>];

/** A preset: routes computed at run time, their types stated (the return type gives `withRouteTypes` its Routes). */
function chatPreset(input: Parameters<typeof defineUpstream>[1]): UpstreamDefinition<'chat', PresetRoutes> {
  return withRouteTypes(defineUpstream('chat', input));
}
const chat = chatPreset({ baseUrl: 'https://chat.example.com/', auth: { type: 'bearer', secret: { env: 'CHAT_KEY' } }, routes: [] });

/** A preset whose id is an option: the id the caller gives is the one the client sees. */
function namedPreset<const Id extends string = 'chat'>(id: Id, input: Parameters<typeof defineUpstream>[1]): UpstreamDefinition<Id, PresetRoutes> {
  const computed: string = id;
  return withRouteTypes(defineUpstream(computed, input));
}
expectTypeOf(namedPreset('groq', { baseUrl: 'https://groq.example/', auth: { type: 'bearer', secret: { env: 'G' } }, routes: [] })).toEqualTypeOf<
  UpstreamDefinition<'groq', PresetRoutes>
>();
// Or stated outright.
expectTypeOf(withRouteTypes<'chat', PresetRoutes>(chat)).toEqualTypeOf<UpstreamDefinition<'chat', PresetRoutes>>();

// As upstreams/index.ts lists them: `satisfies` checks the list without widening it.
export const upstreams = [demo, other, chat] satisfies UpstreamDefinition[];

// Declared inline under `satisfies`, the literal types are kept too.
export const inline = [
  defineUpstream('inline', { baseUrl: 'https://inline.example/', auth: { type: 'bearer', secret: { env: 'K' } }, routes: [{ method: 'GET', path: '/ping' }] }),
] satisfies UpstreamDefinition[];
expectTypeOf<keyof ApiOf<typeof inline>>().toEqualTypeOf<'inline'>();
expectTypeOf<keyof ApiOf<typeof inline>['inline']>().toEqualTypeOf<'GET /ping'>();

const kw = createKeywardClient<typeof upstreams>();

export async function inferredFromDefinitions(): Promise<void> {
  // A zod response schema types the answer; params come from the template.
  expectTypeOf(await kw.demo.get('/items/:id', { params: { id: 'a' } })).toEqualTypeOf<{ id: string; name: string; tags?: string[] | undefined }>();
  await kw.demo.get('/items/:id', { params: { id: 42 } });
  await kw.demo.delete('/items/:id', { params: { id: 'a' } });
  // @ts-expect-error -- no such path
  await kw.demo.get('/item/:id', { params: { id: 'a' } });
  // @ts-expect-error -- a parameter name the template does not have
  await kw.demo.get('/items/:id', { params: { itemId: 'a' } });
  // @ts-expect-error -- the parameter is required
  await kw.demo.get('/items/:id');
  // @ts-expect-error -- no PUT route on demo: there is no `put`
  await kw.demo.put('/items/:id', { params: { id: 'a' } });
  // @ts-expect-error -- POST is declared for /items, not for /items/:id
  await kw.demo.request('POST', '/items/:id', { params: { id: 'a' } });
  // @ts-expect-error -- GET is forwarded without a body
  await kw.demo.get('/items/:id', { params: { id: 'a' }, body: { name: 'x' } });
  // @ts-expect-error -- no upstream with this id
  await kw.nope.get('/items/:id', { params: { id: 'a' } });

  // zod body: z.input, closed like the contract.
  expectTypeOf(await kw.demo.post('/items', { body: { name: 'n', tags: ['t'] } })).toEqualTypeOf<z.input<typeof item>>();
  // @ts-expect-error -- a body field the contract does not have
  await kw.demo.post('/items', { body: { name: 'n', colour: 'red' } });
  // @ts-expect-error -- wrong type for a body field
  await kw.demo.post('/items', { body: { name: 1 } });
  // @ts-expect-error -- the body is required
  await kw.demo.post('/items');
  // @ts-expect-error -- a body contract closes the query (servers merge the two)
  await kw.demo.post('/items', { body: { name: 'n' }, query: { name: 'm' } });

  // Declarative body and response specs, mapped at the type level.
  const note = await kw.demo.post('/notes', { body: { text: 'hi', priority: 'high', tags: ['a'], meta: { pinned: true } } });
  expectTypeOf(note).toEqualTypeOf<{ id: number }>();
  // @ts-expect-error -- not one of the enum's values
  await kw.demo.post('/notes', { body: { text: 'hi', priority: 'urgent' } });
  // @ts-expect-error -- a field the (closed) spec does not declare
  await kw.demo.post('/notes', { body: { text: 'hi', author: 'me' } });
  // @ts-expect-error -- a nested field the spec does not declare
  await kw.demo.post('/notes', { body: { text: 'hi', meta: { archived: true } } });
  // @ts-expect-error -- a required field is missing
  await kw.demo.post('/notes', { body: { priority: 'low' } });

  // Declarative query.
  await kw.demo.get('/search', { query: { q: 'x', limit: 10, tag: ['a', 'b'] } });
  // @ts-expect-error -- the required parameter is missing
  await kw.demo.get('/search', { query: { limit: 10 } });
  // @ts-expect-error -- a parameter the contract does not declare
  await kw.demo.get('/search', { query: { q: 'x', page: 2 } });
  // @ts-expect-error -- the query is required (it has a required parameter)
  await kw.demo.get('/search');

  // No contract: anything goes, answer unknown.
  expectTypeOf(await kw.demo.get('/events', { query: { any: 'thing' } })).toEqualTypeOf<unknown>();
  await kw.demo.post('/models/{model}:generate', { params: { model: 'gemini' }, body: 'anything' });
  await kw.demo.get('/files/*', { params: { '*': 'a/b/c' } });
  await kw.demo.get('/files/*', { params: { '*': ['a', 'b'] } });
  // @ts-expect-error -- the final * is a parameter too
  await kw.demo.get('/files/*');
  // {name:int}: the parameter is `name`, a number or its digits.
  await kw.demo.get('/issues/{number:int}', { params: { number: 12 } });
  await kw.demo.get('/issues/{number:int}', { params: { number: '12' } });
  await kw.demo.get('/reports/v{version:int}.json', { params: { version: 3 } });
  // @ts-expect-error -- the type is not part of the name
  await kw.demo.get('/issues/{number:int}', { params: { 'number:int': 12 } });
  // @ts-expect-error -- the parameter is required
  await kw.demo.get('/issues/{number:int}');

  // zod query, two parameters.
  await kw.other.put('/things/:kind/:id', { params: { kind: 'k', id: 1 }, query: { dryRun: 'true' } });
  // @ts-expect-error -- only "true" or "false"
  await kw.other.put('/things/:kind/:id', { params: { kind: 'k', id: 1 }, query: { dryRun: 'yes' } });
  // @ts-expect-error -- one of the two parameters is missing
  await kw.other.put('/things/:kind/:id', { params: { kind: 'k' } });

  // Stated types (a preset's TypedRoute list).
  const answer = await kw.chat.post('/chat/completions', { body: { model: 'm', messages: [{ role: 'user', content: 'hi' }] } });
  expectTypeOf(answer).toEqualTypeOf<ChatAnswer>();
  // @ts-expect-error -- not a role the stated body type allows
  await kw.chat.post('/chat/completions', { body: { model: 'm', messages: [{ role: 'system', content: 'hi' }] } });
  await kw.chat.get('/models');

  // SSE and raw.
  expectTypeOf(kw.demo.sse('GET', '/events')).toEqualTypeOf<AsyncGenerator<ServerSentEvent, void, undefined>>();
  for await (const event of kw.chat.sse('POST', '/chat/completions', { body: { model: 'm', messages: [] } })) expectTypeOf(event.data).toBeString();
  // @ts-expect-error -- sse checks the route like every call
  kw.demo.sse('GET', '/nope');
  expectTypeOf(kw.demo.raw('DELETE', '/items/:id', { params: { id: 'a' } })).toEqualTypeOf<Promise<Response>>();
}

export async function otherForms(): Promise<void> {
  // A record of definitions.
  const byName = createKeywardClient<{ demo: typeof demo }>();
  await byName.demo.delete('/items/:id', { params: { id: 'x' } });
  // @ts-expect-error -- not in the record
  await byName.other.put('/things/:kind/:id', { params: { kind: 'k', id: 1 } });

  // An API shape, as `npm run keyward -- types` writes it.
  type Generated = { weather: { 'GET /forecast': { query: { city: string; days?: number }; body: never; response: { temp: number } } } };
  const gen = createKeywardClient<Generated>();
  expectTypeOf(await gen.weather.get('/forecast', { query: { city: 'Paris' } })).toEqualTypeOf<{ temp: number }>();
  // @ts-expect-error -- days is a number
  await gen.weather.get('/forecast', { query: { city: 'Paris', days: 'three' } });

  // Definitions TypeScript cannot see (annotated `UpstreamDefinition[]`): any upstream, any path.
  const loose = createKeywardClient<UpstreamDefinition[]>();
  expectTypeOf(loose.anything).toEqualTypeOf<UpstreamClient<AnyRoutes> | undefined>();
  await loose.anything?.post('/whatever/1', { body: { free: 'form' } });
  // Still no body on a GET.
  // @ts-expect-error -- GET is forwarded without a body
  await loose.anything?.get('/whatever/1', { body: { free: 'form' } });
}

export function definitionsStayChecked(): void {
  defineUpstream('typo', {
    baseUrl: 'https://api.example.com/',
    auth: { type: 'bearer', secret: { env: 'K' } },
    // @ts-expect-error -- a misspelt route field is still a compile error with literal inference
    routes: [{ method: 'GET', path: '/a', rols: ['user'] }],
  });
  defineUpstream('typo', {
    baseUrl: 'https://api.example.com/',
    auth: { type: 'bearer', secret: { env: 'K' } },
    routes: [{ method: 'GET', path: '/a' }],
    // @ts-expect-error -- and so is a misspelt upstream field
    timeoutMS: 1000,
  });
}
