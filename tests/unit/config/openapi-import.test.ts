import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../../lib/core/config/load';
import {
  buildUpstream,
  envPrefix,
  importableOperations,
  parseSpecText,
  planImport,
  selectOperations,
  type ImportPlan,
  type ImportResult,
} from '../../../lib/core/config/openapi';
import { compileContract, parseBody, parseQuery } from '../../../lib/core/policy/contract';
import { parseForm } from '../../../lib/core/policy/form';
import { KeywardError } from '../../../lib/core/errors';
import { authorize } from '../../../lib/core/policy/authorize';
import { commonRequest } from '../../../lib/core/config/openapi/shadowed';
import { matchRoute } from '../../../lib/core/route/match';
import { parseProxyPath } from '../../../lib/node/proxy-path';
import { compileTemplate } from '../../../lib/core/route/template';
import type { Session } from '../../../lib/core/session/session';
import { buildRegistry } from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { expectKeywardError, thrown } from '../support';

/**
 * The OpenAPI import (lib/core/config/openapi) on two documents checked into tests/fixtures/openapi: a trimmed
 * Swagger Petstore (3.0, YAML) and an in-house style 3.1 document (JSON) with refs, enums, arrays, form and
 * multipart bodies, unions, maps, recursion and several security schemes. Contracts are then run through the
 * real contract compiler and parsers, so "the contract refuses X" is checked by the code that refuses it.
 */

const FIXTURES = join(import.meta.dirname, '../../fixtures/openapi');
const load = (name: string) => parseSpecText(readFileSync(join(FIXTURES, name), 'utf8'), name);
const petstore = () => planImport(load('petstore.yaml'));
const inventory = (options: { baseUrl?: string } = {}) => planImport(load('inventory.json'), options);

function operation(plan: ImportPlan, key: string) {
  const op = plan.operations.find((candidate) => candidate.key === key);
  if (!op) throw new Error(`no operation ${key}`);
  return op;
}

function importAll(plan: ImportPlan, id: string, auth?: string): ImportResult {
  return buildUpstream(plan, importableOperations(plan), { id, auth });
}

function routeOf(result: ImportResult, method: string, path: string) {
  const index = result.upstream.routes.findIndex((r) => r.method === method && r.path === path);
  if (index === -1) throw new Error(`no route ${method} ${path}`);
  // As start-up sees it: parsed by the schema, then compiled.
  const [definition] = parseConfig({ upstreams: { [result.id]: result.upstream } }, 'test');
  const config = definition!.config.routes[index]!;
  return { route: result.upstream.routes[index]!, contract: compileContract(config, `routes.${index}`) };
}

function warningsOf(result: ImportResult, key: string | null): string[] {
  return result.warnings.filter((w) => w.operation === key).map((w) => w.message);
}

/** Runs `fn`, expects a ConfigError, returns its message. */
function configError(fn: () => unknown): string {
  const error = thrown(fn);
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

function refused(fn: () => unknown): string {
  const error = thrown(fn);
  expect(error).toBeInstanceOf(KeywardError);
  expect((error as KeywardError).code).toBe('contract_violation');
  return (error as KeywardError).message;
}

function query(contract: ReturnType<typeof routeOf>['contract'], search: string) {
  return parseQuery(contract.query!, new URLSearchParams(search));
}

const CATEGORY = { type: 'object', properties: { id: { type: 'integer' }, name: { type: 'string' } } };
/** The Petstore's Pet schema as a contract (and as a response type: it has no null or write-only field). */
const PET = {
  type: 'object',
  properties: {
    id: { type: 'integer' },
    name: { type: 'string' },
    category: CATEGORY,
    photoUrls: { type: 'array', items: { type: 'string' } },
    tags: { type: 'array', items: CATEGORY },
    status: { type: 'string', description: 'pet status in the store', enum: ['available', 'pending', 'sold'] },
  },
  required: ['name', 'photoUrls'],
};

describe('OpenAPI import: the Swagger Petstore (3.0, YAML)', () => {
  it('lists every operation with its method, path, operationId and summary, in document order', () => {
    const plan = petstore();
    expect(plan.title).toBe('Swagger Petstore - OpenAPI 3.0');
    expect(plan.baseUrl).toBe('https://petstore3.swagger.io/api/v3/');
    expect(plan.operations.map((op) => op.key)).toEqual([
      'PUT /pet',
      'POST /pet',
      'GET /pet/findByStatus',
      'GET /pet/findByTags',
      'GET /pet/{petId}',
      'POST /pet/{petId}',
      'DELETE /pet/{petId}',
      'POST /pet/{petId}/uploadImage',
      'GET /store/inventory',
      'POST /store/order',
    ]);
    const get = operation(plan, 'GET /pet/{petId}');
    expect(get).toMatchObject({
      operationId: 'getPetById',
      summary: 'Find pet by ID.',
      deprecated: false,
      skipped: null,
    });
    expect(get.route?.path).toBe('/pet/{petId:int}');
    expect(operation(plan, 'POST /pet/{petId}/uploadImage').bodyUnchecked).toBe(true);
  });

  it('writes routes most specific first, with query and body contracts from the spec', () => {
    const result = importAll(petstore(), 'petstore', 'api_key');
    expect(result.upstream.baseUrl).toBe('https://petstore3.swagger.io/api/v3/');
    // Literal segments before parameters: /pet/findByStatus must not be taken by /pet/{petId:int} (nor could it be).
    expect(result.upstream.routes.map((r) => `${r.method} ${r.path}`)).toEqual([
      'PUT /pet',
      'POST /pet',
      'GET /pet/findByStatus',
      'GET /pet/findByTags',
      'GET /store/inventory',
      'POST /store/order',
      'GET /pet/{petId:int}',
      'POST /pet/{petId:int}',
      'DELETE /pet/{petId:int}',
      'POST /pet/{petId:int}/uploadImage',
    ]);
    // The Pet schema: the request body's contract, and the 200 response's type (the typed client's answer).
    expect(routeOf(result, 'POST', '/pet').route).toEqual({
      method: 'POST',
      path: '/pet',
      query: { properties: {} },
      body: PET,
      response: PET,
    });
    expect(routeOf(result, 'GET', '/pet/findByStatus').route.response).toEqual({ type: 'array', items: PET });
    expect(routeOf(result, 'GET', '/pet/findByStatus').route.query).toEqual({
      properties: {
        status: {
          type: 'string',
          enum: ['available', 'pending', 'sold'],
          description: 'Status values that need to be considered for filter',
        },
      },
    });
  });

  it('the contracts refuse what the spec does not declare and pass what it does', () => {
    const result = importAll(petstore(), 'petstore', 'api_key');
    const byStatus = routeOf(result, 'GET', '/pet/findByStatus').contract;
    expect(query(byStatus, 'status=sold')).toEqual({ status: 'sold' });
    expect(refused(() => query(byStatus, 'status=lost'))).toContain('query.status');
    expect(refused(() => query(byStatus, 'debug=1'))).toContain('unknown field');
    const byTags = routeOf(result, 'GET', '/pet/findByTags').contract;
    expect(query(byTags, 'tags=a&tags=b')).toEqual({ tags: ['a', 'b'] });
    const addPet = routeOf(result, 'POST', '/pet').contract;
    const pet = { name: 'Rex', photoUrls: [], tags: [{ id: 1, name: 'good' }], status: 'available' };
    expect(parseBody(addPet.body!, JSON.stringify(pet))).toEqual(pet);
    expect(refused(() => parseBody(addPet.body!, JSON.stringify({ ...pet, owner: 'me' })))).toContain('unknown field');
    expect(refused(() => parseBody(addPet.body!, JSON.stringify({ photoUrls: [] })))).toContain('body.name');
    expect(refused(() => parseBody(addPet.body!, JSON.stringify({ ...pet, tags: [{ id: 'x' }] })))).toContain(
      'body.tags.0.id',
    );
  });

  it('picks the scheme most operations accept (OAuth 2 → a service token) unless --auth names one', () => {
    const plan = petstore();
    const oauth = importAll(plan, 'petstore');
    expect(oauth.upstream.auth).toEqual({ type: 'bearer', secret: { env: 'PETSTORE_ACCESS_TOKEN' } });
    expect(oauth.env).toEqual(['PETSTORE_ACCESS_TOKEN']);
    expect(warningsOf(oauth, null).join('\n')).toContain('{"oauth": "oidc"}');
    expect(warningsOf(oauth, 'GET /store/inventory')).toContain(
      'asks for api_key; Keyward attaches "petstore_auth" to every route of this upstream',
    );

    const key = importAll(plan, 'petstore', 'api_key');
    expect(key.upstream.auth).toEqual({ type: 'header', name: 'api_key', secret: { env: 'PETSTORE_API_KEY' } });
    // DELETE /pet/{petId} declares the api_key header as a parameter: it is the credential, never the client's.
    expect(warningsOf(key, 'DELETE /pet/{petId}').join('\n')).not.toContain('header parameter');
    expect(warningsOf(oauth, 'DELETE /pet/{petId}')).toContain(
      'header parameter "api_key" not forwarded from the client (add to "requestHeaders" if the API needs it)',
    );
  });

  it('says what each route does not keep exactly', () => {
    const result = importAll(petstore(), 'petstore', 'api_key');
    expect(warningsOf(result, 'POST /pet')).toContain(
      'stricter than the spec: the route accepts application/json only (the spec also allows application/xml, application/x-www-form-urlencoded)',
    );
    // petId is an integer: `{petId:int}` checks it.
    expect(warningsOf(result, 'GET /pet/{petId}').join('\n')).not.toContain('path parameters');
    expect(warningsOf(result, 'POST /pet/{petId}/uploadImage')).toContain(
      'the body (application/octet-stream) is forwarded as sent, unchecked (capped by maxRequestBytes): a contract reads JSON, form and multipart bodies only',
    );
    expect(warningsOf(result, 'POST /store/order')).toContain(
      'stricter than the spec: the spec makes the body optional; the route needs one (JSON matching the contract)',
    );
    expect(routeOf(result, 'POST', '/pet/{petId:int}/uploadImage').route.body).toBeUndefined();
  });

  it('selects by "METHOD /path" or operationId, and refuses names that match nothing', () => {
    const plan = petstore();
    expect(
      selectOperations(plan, ['GET /pet/findByStatus', ' getPetById ', 'get /pet/findByTags']).map((op) => op.key),
    ).toEqual(['GET /pet/findByStatus', 'GET /pet/{petId}', 'GET /pet/findByTags']);
    expect(configError(() => selectOperations(plan, ['GET /pets']))).toContain(
      'the document has no operation "GET /pets"',
    );
    expect(configError(() => selectOperations(plan, ['nope']))).toContain('"nope"');
    const one = buildUpstream(plan, selectOperations(plan, ['getPetById']), { id: 'pets' });
    // petId is an integer: `/pet/{petId:int}` cannot serve the literal siblings the user did not choose, so none
    // is refused (an untyped parameter would take them: ./shadowed, "operations not chosen").
    expect(one.upstream.routes).toEqual([{ method: 'GET', path: '/pet/{petId:int}', query: { properties: {} }, response: PET }]);
    // GET /pet/{petId} accepts api_key alone or petstore_auth alone: the key, on a tie.
    expect(one.upstream.auth).toEqual({ type: 'header', name: 'api_key', secret: { env: 'PETS_API_KEY' } });
    expect(configError(() => buildUpstream(plan, [], { id: 'pets' }))).toContain('no operation selected');
  });
});

describe('OpenAPI import: a 3.1 document (refs, enums, arrays, forms, unions, security schemes)', () => {
  it('takes the base URL from servers[0] with its variables, or from --base-url', () => {
    expect(inventory().baseUrl).toBe('https://eu.api.acme.example/v2/');
    expect(inventory({ baseUrl: 'https://staging.acme.example/v2' }).baseUrl).toBe('https://staging.acme.example/v2/');
  });

  it('skips what cannot be a route, with the reason', () => {
    const plan = inventory();
    expect(operation(plan, 'GET /items/{from}-{to}').skipped).toBe(
      'the segment "{from}-{to}" holds 2 parameters; a Keyward template holds one per segment',
    );
    expect(operation(plan, 'GET /reports/{year}').skipped).toBe(
      'served from its own server (https://reports.acme.example); import it into an upstream of its own with --base-url',
    );
    expect(operation(plan, 'TRACE /debug').skipped).toBe('TRACE is never forwarded');
    expect(configError(() => selectOperations(plan, ['traceDebug']))).toContain(
      'TRACE /debug cannot be imported: TRACE is never forwarded',
    );
    // A literal "*" or ":name" segment would be a wildcard or a parameter in a template: far broader than the path.
    const literal = planImport(
      parseSpecText(
        JSON.stringify({
          openapi: '3.1.0',
          info: { title: 'l', version: '1' },
          servers: [{ url: 'https://api.example.com/v1' }],
          paths: {
            '/users/:me/profile': { get: { responses: { '200': { description: 'ok' } } } },
            '/admin/*': { delete: { responses: { '204': { description: 'gone' } } } },
            '/users/me:profile': { get: { responses: { '200': { description: 'ok' } } } },
          },
        }),
        'literal.json',
      ),
    );
    expect(operation(literal, 'GET /users/:me/profile').skipped).toBe('the literal segment ":me" would match any value in a Keyward template');
    expect(operation(literal, 'DELETE /admin/*').skipped).toBe('the literal segment "*" would match any remaining path in a Keyward template');
    expect(operation(literal, 'GET /users/me:profile').skipped).toBeNull();
    // With --base-url naming that server, the report is importable (and the rest is not sent there by mistake: it is the user's choice).
    expect(operation(inventory({ baseUrl: 'https://reports.acme.example' }), 'GET /reports/{year}').skipped).toBeNull();
  });

  it('writes path templates Keyward matches: {a} → :a, or {a:int} for an integer (renamed when needed), {id}.json kept, literal first', () => {
    const result = importAll(inventory(), 'acme');
    const paths = result.upstream.routes.map((r) => `${r.method} ${r.path}`);
    expect(paths).toEqual([
      'GET /items',
      'POST /items',
      'POST /uploads',
      'POST /login',
      'GET /stats',
      'POST /items/search',
      'GET /items/{id}.json',
      'GET /items/{item_id:int}',
      'DELETE /items/{item_id:int}',
      'PATCH /items/{item_id:int}',
    ]);
  });

  it('query contract: path-level $ref parameters, array enums, oneOf consts, exploded objects, exclusive bounds', () => {
    const result = importAll(inventory(), 'acme');
    const { route, contract } = routeOf(result, 'GET', '/items');
    expect(route.query).toEqual({
      properties: {
        limit: { type: 'integer', minimum: 1, maximum: 100 },
        status: { type: 'array', items: { type: 'string', enum: ['draft', 'active', 'archived'] }, maxItems: 3 },
        sort: { type: 'string', enum: ['name', 'price'] },
        color: { type: 'string', enum: ['red', 'green', 'blue'] },
        size: { type: 'integer', minimum: 1 },
        q: { type: 'string', maxLength: 100 },
      },
    });
    expect(query(contract, 'limit=100&status=draft&status=active&color=red&size=2')).toEqual({
      limit: 100,
      status: ['draft', 'active'],
      color: 'red',
      size: 2,
    });
    expect(refused(() => query(contract, 'limit=101'))).toContain('query.limit');
    expect(refused(() => query(contract, 'tags=a,b'))).toContain('unknown field');
    const warnings = warningsOf(result, 'GET /items');
    expect(warnings).toContain(
      'looser than the spec: "pattern" is not checked (contracts have none, on purpose): query.q',
    );
    expect(warnings).toContain(
      'stricter than the spec: left out of the contract, so a request carrying them is refused: query.tags: a list sent as one value (style "form", explode false) cannot be split by a contract',
    );
    expect(warnings).toContain('cookie parameter "session" is not forwarded (Keyward never forwards cookies)');
    expect(warnings).toContain(
      'header parameter "x-trace" not forwarded from the client (add to "requestHeaders" if the API needs it)',
    );
  });

  it('JSON body: allOf merged, $refs resolved, readOnly left out, and every loosening or tightening said', () => {
    const result = importAll(inventory(), 'acme');
    const { route, contract } = routeOf(result, 'POST', '/items');
    expect(route.body).toEqual({
      type: 'object',
      properties: {
        name: { type: 'string', minLength: 1, maxLength: 80 },
        sku: { type: 'string' },
        price: { type: 'number', minimum: 0, maximum: 100000 },
        quantity: { type: 'integer', minimum: 0 },
        tags: { type: 'array', items: { type: 'string', maxLength: 30 }, maxItems: 10 },
        dimensions: {
          type: 'object',
          properties: { width: { type: 'number', minimum: 0 }, height: { type: 'number', minimum: 0 } },
          required: ['width', 'height'],
        },
        color: { type: 'string', enum: ['red', 'green', 'blue'] },
        kind: { type: 'string', enum: ['physical'] },
        category: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] },
      },
      // "id" is required too, but readOnly: a client never sends it.
      required: ['name', 'sku'],
    });
    expect(warningsOf(result, 'POST /items')).toEqual([
      'stricter than the spec: the route accepts application/json only (the spec also allows application/xml)',
      'looser than the spec: "pattern" is not checked (contracts have none, on purpose): body.sku',
      'looser than the spec: an exclusive bound is checked as inclusive: body.price',
      'looser than the spec: "uniqueItems" is not checked: body.tags',
      'stricter than the spec: null is refused (contracts have no null): body.color',
      'stricter than the spec: left out of the contract, so a request carrying them is refused: ' +
        'body.metadata: a map ("additionalProperties") cannot be expressed in a contract; ' +
        'body.category.children[]: recursive schema (#/components/schemas/Category contains itself); ' +
        'body.variant: "oneOf" (one of 2 shapes) cannot be expressed in a contract',
    ]);
    const item = { name: 'Bolt', sku: 'BLT-0001', color: 'red', category: { name: 'hardware' } };
    expect(parseBody(contract.body!, JSON.stringify(item))).toEqual(item);
    expect(refused(() => parseBody(contract.body!, JSON.stringify({ ...item, metadata: { a: 'b' } })))).toContain(
      'unknown field',
    );
    expect(refused(() => parseBody(contract.body!, JSON.stringify({ ...item, color: null })))).toContain('body.color');
    expect(refused(() => parseBody(contract.body!, JSON.stringify({ ...item, id: 7 })))).toContain('unknown field');
  });

  it('a body whose top level is a union is forwarded without a contract, and the chooser says so', () => {
    const plan = inventory();
    const search = operation(plan, 'POST /items/search');
    expect(search.bodyUnchecked).toBe(true);
    expect(search.route?.body).toBeUndefined();
    expect(search.warnings).toContain(
      'the body is forwarded unchecked (capped by maxRequestBytes): body: "oneOf" (one of 2 shapes) cannot be expressed in a contract',
    );
  });

  it('+json media types are JSON; 3.1 null types are refused; a $ref sibling description is kept', () => {
    const result = importAll(inventory(), 'acme');
    expect(routeOf(result, 'PATCH', '/items/{item_id:int}').route.body).toEqual({
      type: 'object',
      properties: { name: { type: 'string', maxLength: 80 }, quantity: { type: 'integer', minimum: 0 } },
      description: 'Fields to change',
    });
    expect(warningsOf(result, 'PATCH /items/{item-id}')).toContain(
      'stricter than the spec: null is refused (contracts have no null): body.name',
    );
    expect(warningsOf(result, 'DELETE /items/{item-id}')).toContain('deprecated in the document');
  });

  it("a form body's arrays are sent as the spec encodes them: repeated names by default, indexes for deepObject", () => {
    const spec = (encoding: Record<string, unknown>) =>
      planImport(
        parseSpecText(
          JSON.stringify({
            openapi: '3.1.0',
            info: { title: 'f', version: '1' },
            servers: [{ url: 'https://api.example.com/v1' }],
            paths: {
              '/charges': {
                post: {
                  requestBody: {
                    content: {
                      'application/x-www-form-urlencoded': {
                        schema: {
                          type: 'object',
                          properties: {
                            expand: { type: 'array', items: { type: 'string' } },
                            tags: { type: 'array', items: { type: 'string' } },
                          },
                        },
                        encoding,
                      },
                    },
                  },
                  responses: { '200': { description: 'ok' } },
                },
              },
            },
          }),
          'f.json',
        ),
      );
    const deep = { style: 'deepObject', explode: true };
    const stripeLike = importAll(spec({ expand: deep, tags: deep }), 'f');
    expect(routeOf(stripeLike, 'POST', '/charges').route.formArrays).toBeUndefined();
    expect(routeOf(stripeLike, 'POST', '/charges').contract.formArrays).toBe('indexes');
    expect(routeOf(importAll(spec({}), 'f'), 'POST', '/charges').contract.formArrays).toBe('repeat');
    const mixed = importAll(spec({ expand: deep }), 'f');
    expect(routeOf(mixed, 'POST', '/charges').contract.formArrays).toBe('indexes');
    expect(warningsOf(mixed, 'POST /charges').join('\n')).toContain('some form arrays as repeated names and others in brackets (expand)');
    // A list sent as one value (tag=a,b) cannot be checked: the body is forwarded unchecked, and says so.
    for (const oneValue of [{ style: 'form', explode: false }, { style: 'pipeDelimited' }, { style: 'spaceDelimited' }]) {
      const result = importAll(spec({ tags: oneValue }), 'f');
      const { route, contract } = routeOf(result, 'POST', '/charges');
      expect(route.body).toBeUndefined();
      expect(contract.body).toBeNull();
      expect(warningsOf(result, 'POST /charges').join('\n')).toContain('a list sent as one value (tags) cannot be split by a contract');
    }
  });

  it('form and multipart bodies get bodyFormat, files their media types', () => {
    const result = importAll(inventory(), 'acme');
    const login = routeOf(result, 'POST', '/login');
    expect(login.route).toMatchObject({
      bodyFormat: 'form',
      // OpenAPI's default for a form property is style "form", exploded: scopes=read&scopes=write.
      formArrays: 'repeat',
      body: {
        type: 'object',
        required: ['username', 'password'],
        properties: {
          username: { type: 'string', maxLength: 64 },
          password: { type: 'string' },
          remember: { type: 'boolean' },
          scopes: { type: 'array', items: { type: 'string', enum: ['read', 'write'] } },
        },
      },
    });
    expect(parseForm(login.contract.body!, 'username=ada&password=pw&remember=true&scopes=read&scopes=write')).toEqual({
      username: 'ada',
      password: 'pw',
      remember: true,
      scopes: ['read', 'write'],
    });
    expect(refused(() => parseForm(login.contract.body!, 'username=ada&password=pw&admin=1'))).toContain(
      'unknown field',
    );
    expect(routeOf(result, 'POST', '/uploads').route).toMatchObject({
      bodyFormat: 'multipart',
      body: {
        type: 'object',
        required: ['file'],
        properties: {
          file: { type: 'file', contentTypes: ['image/png', 'image/jpeg'] },
          caption: { type: 'string', maxLength: 200 },
          labels: { type: 'array', items: { type: 'string' } },
        },
      },
    });
  });

  it('security: one scheme for the upstream, the secret always an environment variable', () => {
    const plan = inventory();
    const header = importAll(plan, 'acme');
    expect(header.upstream.auth).toEqual({ type: 'header', name: 'x-acme-key', secret: { env: 'ACME_API_KEY' } });
    expect(warningsOf(header, 'GET /stats')).toContain(
      'asks for QueryKey; Keyward attaches "ApiKeyHeader" to every route of this upstream',
    );
    // The required query parameter sent as JSON can only be checked as a string (said).
    expect(routeOf(header, 'GET', '/stats').route.query).toEqual({
      properties: { key: { type: 'string' }, period: { type: 'string' } },
      required: ['period'],
    });
    expect(warningsOf(header, 'GET /stats')).toContain(
      'query parameter "access_token" is refused by Keyward on every route (it could carry or fake a credential)',
    );

    // The credential's own query parameter is Keyward's to write: out of the contract.
    const query = importAll(plan, 'acme', 'QueryKey');
    expect(query.upstream.auth).toEqual({ type: 'query', name: 'key', secret: { env: 'ACME_API_KEY' } });
    expect(routeOf(query, 'GET', '/stats').route.query).toEqual({
      properties: { period: { type: 'string' } },
      required: ['period'],
    });

    expect(importAll(plan, 'acme', 'Bearer').upstream.auth).toEqual({
      type: 'bearer',
      secret: { env: 'ACME_API_KEY' },
    });
    const basic = importAll(plan, 'my-api', 'Basic');
    expect(basic.upstream.auth).toEqual({
      type: 'basic',
      username: { env: 'MY_API_USERNAME' },
      secret: { env: 'MY_API_PASSWORD' },
    });
    expect(basic.env).toEqual(['MY_API_USERNAME', 'MY_API_PASSWORD']);
    expect(importAll(plan, 'acme', 'OAuth').upstream.auth).toEqual({
      type: 'bearer',
      secret: { env: 'ACME_ACCESS_TOKEN' },
    });
    expect(configError(() => importAll(plan, 'acme', 'CookieKey'))).toBe(
      '--auth: "CookieKey": a key sent as a cookie is not supported',
    );
    expect(configError(() => importAll(plan, 'acme', 'Nope'))).toContain(
      '--auth: the document declares no security scheme "Nope"',
    );
    // No value is ever written: every secret in the output is an {"env": …} reference.
    expect(JSON.stringify([header, query, basic].map((r) => r.upstream.auth))).not.toMatch(/"(?:secret|username)":"/);
  });

  it('a header scheme the auth schema refuses (x-request-id, user-agent…) is passed over for a usable one, or named', () => {
    for (const header of ['X-Request-Id', 'User-Agent', 'Content-Type', 'Accept-Encoding', 'Connection']) {
      const plan = planImport(
        doc(
          { security: [{ k: [] }, { b: [] }] },
          { components: { securitySchemes: { k: { type: 'apiKey', in: 'header', name: header }, b: { type: 'http', scheme: 'bearer' } } } },
        ),
      );
      expect(importAll(plan, 'acme').upstream.auth, header).toEqual({ type: 'bearer', secret: { env: 'ACME_API_KEY' } });
      expect(configError(() => importAll(plan, 'acme', 'k')), header).toContain(`header "${header}" cannot carry a credential`);
    }
  });

  it('environment variable names from upstream ids', () => {
    expect(envPrefix('petstore')).toBe('PETSTORE');
    expect(envPrefix('my-api_2')).toBe('MY_API_2');
    expect(envPrefix('3d')).toBe('UPSTREAM_3D');
  });
});

/** A minimal 3.0 document around one operation. */
function doc(
  operation: Record<string, unknown>,
  extra: Record<string, unknown> = {},
  path = '/things',
): Record<string, unknown> {
  return {
    openapi: '3.0.3',
    info: { title: 'T', version: '1' },
    servers: [{ url: 'https://api.example.com' }],
    paths: { [path]: { post: operation } },
    ...extra,
  };
}

/** The JSON body contract of a one-operation document whose body schema is `schema`. */
function bodyOf(schema: unknown, components: Record<string, unknown> = {}) {
  const plan = planImport(
    doc(
      { requestBody: { required: true, content: { 'application/json': { schema } } } },
      { components: { schemas: components } },
    ),
  );
  const op = plan.operations[0]!;
  return { body: op.route?.body, unchecked: op.bodyUnchecked, warnings: op.warnings };
}

describe('OpenAPI import: schemas a contract cannot hold exactly', () => {
  it('merges allOf constraints to the tighter one, and refuses parts that cannot both hold', () => {
    expect(
      bodyOf({
        allOf: [
          { type: 'integer', minimum: 1, maximum: 10 },
          { type: 'number', minimum: 3 },
        ],
      }).body,
    ).toEqual({
      type: 'integer',
      minimum: 3,
      maximum: 10,
    });
    expect(bodyOf({ allOf: [{ type: 'string', enum: ['a', 'b'] }, { enum: ['b', 'c'] }] }).body).toEqual({
      type: 'string',
      enum: ['b'],
    });
    const conflict = bodyOf({ allOf: [{ type: 'string' }, { type: 'integer' }] });
    expect(conflict.unchecked).toBe(true);
    expect(conflict.warnings.join('\n')).toContain('body: allOf combines type "string" with type "integer"');
  });

  it('a required field that cannot be expressed leaves the whole body unchecked (said); an optional one is left out', () => {
    const required = bodyOf({
      type: 'object',
      required: ['meta'],
      properties: { meta: { type: 'object', additionalProperties: true } },
    });
    expect(required.body).toBeUndefined();
    expect(required.warnings.join('\n')).toContain(
      'body.meta: a map ("additionalProperties") cannot be expressed in a contract',
    );
    const optional = bodyOf({ type: 'object', properties: { a: { type: 'string' }, meta: {} } });
    expect(optional.body).toEqual({ type: 'object', properties: { a: { type: 'string' } } });
    expect(optional.warnings.join('\n')).toContain(
      'left out of the contract, so a request carrying them is refused: body.meta: a value of any type cannot be expressed',
    );
  });

  it('a readOnly field is left out silently, even a required one a contract could not express', () => {
    const result = bodyOf({
      type: 'object',
      required: ['id', 'stats', 'name'],
      properties: {
        id: { type: 'string', readOnly: true },
        stats: { type: 'object', additionalProperties: true, readOnly: true },
        name: { type: 'string' },
      },
    });
    expect(result.body).toEqual({ type: 'object', properties: { name: { type: 'string' } }, required: ['name'] });
    expect(result.warnings).toEqual([]);
  });

  it('objects: additionalProperties false with no properties is {}; extra keys allowed by the spec are refused (said)', () => {
    expect(bodyOf({ type: 'object', additionalProperties: false }).body).toEqual({ type: 'object', properties: {} });
    const open = bodyOf({ type: 'object', properties: { a: { type: 'string' } }, additionalProperties: true });
    expect(open.body).toEqual({ type: 'object', properties: { a: { type: 'string' } } });
    expect(open.warnings).toContain(
      'stricter than the spec: keys beyond the declared properties are refused (contracts are closed objects): body',
    );
    const badName = bodyOf({ type: 'object', properties: { 'a.b': { type: 'string' }, ok: { type: 'string' } } });
    expect(badName.body).toEqual({ type: 'object', properties: { ok: { type: 'string' } } });
    expect(badName.warnings.join('\n')).toContain(
      'body."a.b": field names in a contract are letters, digits, "_" and "-"',
    );
  });

  it('3.0 nullable, integer exclusive bounds, anyOf of "required" lists, multipleOf', () => {
    expect(
      bodyOf({ type: 'integer', minimum: 0, exclusiveMinimum: true, maximum: 10, exclusiveMaximum: true }).body,
    ).toEqual({
      type: 'integer',
      minimum: 1,
      maximum: 9,
    });
    const nullable = bodyOf({ type: 'string', nullable: true });
    expect(nullable.body).toEqual({ type: 'string' });
    expect(nullable.warnings).toContain('stricter than the spec: null is refused (contracts have no null): body');
    const choice = bodyOf({
      type: 'object',
      properties: { email: { type: 'string' }, phone: { type: 'string' } },
      anyOf: [{ required: ['email'] }, { required: ['phone'] }],
    });
    expect(choice.body).toEqual({
      type: 'object',
      properties: { email: { type: 'string' }, phone: { type: 'string' } },
    });
    expect(choice.warnings.join('\n')).toContain(
      'which fields are required together (a oneOf/anyOf of "required" lists) is not checked: body',
    );
    expect(bodyOf({ type: 'number', multipleOf: 0.5 }).warnings).toContain(
      'looser than the spec: "multipleOf" is not checked: body',
    );
  });

  it('a recursive required field, a type list and a tuple are reasons, not crashes', () => {
    const tree = bodyOf(
      { $ref: '#/components/schemas/Node' },
      {
        Node: { type: 'object', required: ['child'], properties: { child: { $ref: '#/components/schemas/Node' } } },
      },
    );
    expect(tree.unchecked).toBe(true);
    expect(tree.warnings.join('\n')).toContain(
      'body.child: recursive schema (#/components/schemas/Node contains itself)',
    );
    expect(bodyOf({ type: ['string', 'integer'] }).warnings.join('\n')).toContain(
      'one of several types (string, integer)',
    );
    expect(bodyOf({ type: 'array', prefixItems: [{ type: 'string' }] }).warnings.join('\n')).toContain(
      'a tuple ("prefixItems")',
    );
  });

  it('an upstream whose document names no usable server needs --base-url', () => {
    const none = planImport({ ...doc({ responses: {} }), servers: undefined });
    expect(none.baseUrl).toBeNull();
    expect(none.baseUrlProblem).toBe('the document names no server ("servers"): pass --base-url https://…');
    expect(configError(() => buildUpstream(none, importableOperations(none), { id: 't' }))).toContain('--base-url');
    const relative = planImport({ ...doc({ responses: {} }), servers: [{ url: '/api/v3' }] });
    expect(relative.baseUrlProblem).toBe(
      'the document\'s server "/api/v3" is not an absolute http(s) URL: pass --base-url https://…',
    );
    const given = planImport(
      { ...doc({ responses: {} }), servers: [{ url: '/api/v3' }] },
      { baseUrl: 'https://api.example.com/api/v3' },
    );
    expect(buildUpstream(given, importableOperations(given), { id: 't' }).upstream.baseUrl).toBe(
      'https://api.example.com/api/v3/',
    );
  });

  it('a relative server is resolved against --base-url, for the upstream and for operations that repeat it', () => {
    const relative = (servers: unknown) => ({
      openapi: '3.0.3',
      info: { title: 'Pets', version: '1' },
      servers,
      paths: {
        '/pets': { get: { operationId: 'listPets', responses: { 200: { description: 'ok' } } } },
        '/pets/{id}': { get: { operationId: 'getPet', servers: [{ url: '/api/v3' }], responses: { 200: { description: 'ok' } } } },
        '/admin': { get: { operationId: 'admin', servers: [{ url: '/admin/v1' }], responses: { 200: { description: 'ok' } } } },
      },
    });
    const plan = planImport(relative([{ url: '/api/v3' }]), { baseUrl: 'https://petstore3.swagger.io' });
    expect(plan.baseUrl).toBe('https://petstore3.swagger.io/api/v3/');
    expect(operation(plan, 'GET /pets/{id}').skipped).toBeNull();
    expect(operation(plan, 'GET /admin').skipped).toBe(
      'served from its own server (/admin/v1); import it into an upstream of its own with --base-url',
    );
    expect(buildUpstream(plan, selectOperations(plan, ['listPets', 'getPet']), { id: 'pets' }).upstream.baseUrl).toBe(
      'https://petstore3.swagger.io/api/v3/',
    );
    // A relative path without "/" is resolved as URLs are; a server on another host ("//…") never moves --base-url.
    expect(planImport(relative([{ url: 'v3' }]), { baseUrl: 'https://api.example.com/pets/' }).baseUrl).toBe('https://api.example.com/pets/v3/');
    expect(planImport(relative([{ url: '//other.example/v3' }]), { baseUrl: 'https://api.example.com/pets' }).baseUrl).toBe('https://api.example.com/pets/');
    // An absolute server is replaced by --base-url, as before.
    expect(planImport(relative([{ url: 'https://prod.example/api/v3' }]), { baseUrl: 'https://staging.example/v3' }).baseUrl).toBe('https://staging.example/v3/');
  });

  it('a query parameter or a field named "__proto__" is left out, said (the config loader refuses the name)', () => {
    const param = (required: boolean) => ({ name: '__proto__', in: 'query', required, schema: { type: 'string' } });
    const optional = planImport(doc({ parameters: [param(false), { name: 'q', in: 'query', schema: { type: 'string' } }] })).operations[0]!;
    expect(Object.keys(optional.route!.query!.properties)).toEqual(['q']);
    expect(optional.warnings.join('\n')).toContain('query.__proto__: "__proto__" cannot be a name in the config');
    const required = planImport(doc({ parameters: [param(true)] })).operations[0]!;
    expect(required.route!.query).toBeUndefined();
    expect(required.warnings.join('\n')).toContain('required query parameter "__proto__" cannot be declared');
    const { body, warnings } = bodyOf(
      JSON.parse('{"type":"object","properties":{"name":{"type":"string"},"__proto__":{"type":"string"}}}'),
    );
    expect(body).toEqual({ type: 'object', properties: { name: { type: 'string' } } });
    expect(warnings.join('\n')).toContain('body."__proto__": "__proto__" cannot be a name in the config');
    // What is written loads.
    const plan = planImport(doc({ parameters: [param(false)] }));
    const result = buildUpstream(plan, importableOperations(plan), { id: 't' });
    expect(() => parseConfig(JSON.parse(JSON.stringify({ upstreams: { t: result.upstream } })), 'keyward.json')).not.toThrow();
  });

  it('an optional field named as an Object.prototype member is imported, and said to be left out of the typed client', () => {
    const op = planImport(
      doc({
        parameters: [{ name: 'toString', in: 'query', schema: { type: 'string' } }],
        requestBody: {
          required: true,
          content: { 'application/json': { schema: { type: 'object', required: ['valueOf'], properties: { valueOf: { type: 'integer' }, constructor: { type: 'string' } } } } },
        },
      }),
    ).operations[0]!;
    expect(Object.keys(op.route!.query!.properties)).toEqual(['toString']);
    expect(Object.keys((op.route!.body as { properties: object }).properties)).toEqual(['valueOf', 'constructor']);
    expect(op.warnings.filter((w) => w.includes('typed client'))).toEqual([
      "the optional field query.toString is left out of the typed client's types (TypeScript reads an optional field of that name from Object.prototype, and would refuse every call to the route)",
      "the optional field body.constructor is left out of the typed client's types (TypeScript reads an optional field of that name from Object.prototype, and would refuse every call to the route)",
    ]);
  });

  it('no usable security scheme: a placeholder credential from the environment, and a warning', () => {
    const plan = planImport(doc({ responses: {} }));
    const result = buildUpstream(plan, importableOperations(plan), { id: 'things' });
    expect(result.upstream.auth).toEqual({ type: 'bearer', secret: { env: 'THINGS_API_KEY' } });
    expect(warningsOf(result, null).join('\n')).toContain(
      'the selected operations declare no security: wrote a placeholder, a bearer token from THINGS_API_KEY',
    );
  });

  it('two templates that match the same requests: the second is left out, said', () => {
    const plan = planImport({
      ...doc({}),
      paths: {
        '/a/{x}': { get: { responses: {} } },
        '/a/{y}': { get: { responses: {} } },
      },
    });
    const result = buildUpstream(plan, importableOperations(plan), { id: 'a' });
    expect(result.upstream.routes.map((r) => r.path)).toEqual(['/a/:x']);
    expect(warningsOf(result, 'GET /a/{y}')).toEqual([
      'left out: GET /a/{x} matches the same requests and comes first',
    ]);
  });
});

describe('OpenAPI import: operations not chosen are never served by a chosen route', () => {
  const get = (operationId: string, params: string[] = []) => ({
    get: {
      operationId,
      parameters: params.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } })),
      responses: { 200: { description: 'ok' } },
    },
  });
  const users = () =>
    planImport({
      openapi: '3.1.0',
      info: { title: 'Users', version: '1' },
      servers: [{ url: 'https://api.example.com/v1' }],
      components: { securitySchemes: { key: { type: 'apiKey', in: 'header', name: 'x-api-key' } } },
      security: [{ key: [] }],
      paths: {
        '/users/{id}': { ...get('getUser', ['id']), delete: { operationId: 'deleteUser', parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string' } }], responses: { 204: { description: 'gone' } } } },
        '/users/export': { ...get('exportAllUsers'), post: { operationId: 'startExport', responses: { 202: { description: 'started' } } } },
        '/users/{id}/avatar': get('avatar', ['id']),
        '/users/me/password-reset-tokens': get('adminTokens'),
        '/users/{id}.csv': get('userCsv', ['id']),
        '/users/{id}/files/{name}': get('file', ['id', 'name']),
        '/users/{id}/files/latest': get('latestFile', ['id']),
        '/reports/summary': get('summary'),
        '/reports/{year}': get('report', ['year']),
      },
    });
  const session: Session = {
    userId: 'u1',
    name: null,
    roles: ['user', 'admin'],
    expiresAt: Date.now() + 60_000,
    sessionId: 's1',
    authTime: 0,
    claims: {},
    via: 'cookie',
  };

  it('writes a route nobody may call for each operation a chosen route would serve, and says so', () => {
    const plan = users();
    const result = buildUpstream(plan, selectOperations(plan, ['getUser', 'avatar', 'file', 'summary']), { id: 'users' });
    expect(result.upstream.routes.map((r) => `${r.method} ${r.path}${r.roles ? ' refused' : ''}`)).toEqual([
      'GET /reports/summary',
      'GET /users/export refused',
      'GET /users/{id}.csv refused',
      'GET /users/:id',
      'GET /users/:id/avatar',
      'GET /users/:id/files/latest refused',
      'GET /users/:id/files/:name',
    ]);
    expect(result.upstream.routes.filter((r) => r.roles).every((r) => r.roles!.length === 0)).toBe(true);
    for (const [key, servedBy] of [
      ['GET /users/export', 'GET /users/{id}'],
      ['GET /users/{id}.csv', 'GET /users/{id}'],
      ['GET /users/{id}/files/latest', 'GET /users/{id}/files/{name}'],
    ] as const) {
      expect(warningsOf(result, key)).toEqual([
        `not chosen, but the route of ${servedBy} would serve it: written as a route nobody may call ("roles": [], 403 forbidden)`,
      ]);
    }
    // Not refused: another method (no chosen POST route can serve it), a path no chosen route matches, and a
    // broader operation (`/reports/{year}`) whose requests the chosen literal takes only where the document does.
    for (const key of ['POST /users/export', 'GET /users/me/password-reset-tokens', 'GET /reports/{year}', 'DELETE /users/{id}'])
      expect(warningsOf(result, key)).toEqual([]);
  });

  it('the written config, loaded by start-up, refuses the operation not chosen and still serves the chosen one', () => {
    const plan = users();
    const result = buildUpstream(plan, selectOperations(plan, ['getUser', 'avatar']), { id: 'users' });
    // As the CLI writes it and start-up reads it: JSON, then the config schema, then the registry.
    const [definition] = parseConfig(JSON.parse(JSON.stringify({ upstreams: { users: result.upstream } })), 'keyward.json');
    const upstream = buildRegistry([definition!], { USERS_API_KEY: randomSecret() }).get('users')!;

    const exported = matchRoute(upstream, 'GET', ['users', 'export']);
    expect(exported.route.template).toBe('/users/export');
    expectKeywardError(thrown(() => authorize(exported.route, exported.params, session)), 'forbidden');

    const user = matchRoute(upstream, 'GET', ['users', '123']);
    expect(user.route.template).toBe('/users/:id');
    expect({ ...user.params }).toEqual({ id: '123' });
    expect(() => authorize(user.route, user.params, session)).not.toThrow();
    expect(matchRoute(upstream, 'GET', ['users', '123', 'avatar']).route.template).toBe('/users/:id/avatar');
  });

  it('two templates share a request only where the run-time matcher would match both', () => {
    const common = (a: string, b: string) => commonRequest(compileTemplate(a), compileTemplate(b))?.join('/') ?? null;
    expect(common('/users/export', '/users/:id')).toBe('users/export');
    expect(common('/users/{id}.csv', '/users/:id')).toBe('users/0.csv');
    expect(common('/f/ab:{v}', '/f/{w}:cd')).toBe('f/ab:cd');
    expect(common('/f/{x}.json', '/f/{y}.txt')).toBeNull();
    expect(common('/m/{model}:run', '/m/:id')).toBeNull(); // `:id` never takes a ":"
    expect(common('/m/{model}:run', '/m/{id:colon}')).toBe('m/0:run');
    expect(common('/files/a/b', '/files/*')).toBe('files/a/b');
    expect(common('/files', '/files/*')).toBeNull();
    expect(common('/users/:id/avatar', '/users/:id')).toBeNull();
  });

  it('an operation not chosen of the same rank as a chosen one, sharing a request with it, is named in a warning (nothing can be refused apart)', () => {
    const plan = planImport({
      openapi: '3.1.0',
      info: { title: 'Files', version: '1' },
      servers: [{ url: 'https://api.example.com/v1' }],
      paths: { '/files/{name}.json': get('fileJson', ['name']), '/files/export{rest}': get('exportFiles', ['rest']) },
    });
    const result = buildUpstream(plan, selectOperations(plan, ['fileJson']), { id: 'files' });
    expect(result.upstream.routes.map((route) => `${route.method} ${route.path}`)).toEqual(['GET /files/{name}.json']);
    expect(warningsOf(result, 'GET /files/export{rest}')).toEqual([
      'not chosen, but the route of GET /files/{name}.json serves the requests the two paths share (neither is more specific, so none can be refused apart): check the API answers them as GET /files/{name}.json',
    ]);
  });

  // A path item in another file, and paths whose operations cannot be imported: a chosen route serves them too.
  const unimported = () =>
    planImport({
      openapi: '3.1.0',
      info: { title: 'Users', version: '1' },
      servers: [{ url: 'https://api.example.com/v1' }],
      paths: {
        '/users/{id}': { ...get('getUser', ['id']), delete: { ...get('deleteUser', ['id']).get } },
        '/users/me': get('me'),
        '/users/export': { $ref: 'admin.yaml#/paths/~1users~1export' },
        '/users/admins': { servers: [{ url: 'https://admin.example.com' }], ...get('admins') },
        '/users/{first}.{last}': get('byName', ['first', 'last']),
        '/files/{name}': get('getFile', ['name']),
        '/files/*': get('allFiles'),
        '/files/:latest': get('latestFile'),
        '/archive': { $ref: 'archive.yaml#/paths/~1archive' },
      },
    });

  it('an integer parameter early in a chosen path does not outrank a literal later in an operation not chosen: it is still refused', () => {
    const typed = (operationId: string, names: string[]) => ({
      get: {
        operationId,
        parameters: names.map((name) => ({ name, in: 'path', required: true, schema: { type: name === 'id' ? 'integer' : 'string' } })),
        responses: { 200: { description: 'ok' } },
      },
    });
    const plan = planImport({
      openapi: '3.1.0',
      info: { title: 'Users', version: '1' },
      servers: [{ url: 'https://api.example.com/v1' }],
      paths: {
        '/users/{id}/{field}': typed('getField', ['id', 'field']),
        '/users/{uid}/keys': typed('keys', ['uid']),
        '/users/{id}/password': { $ref: 'admin.yaml#/paths/~1users~1{id}~1password' },
      },
    });
    const result = buildUpstream(plan, selectOperations(plan, ['getField']), { id: 'users' });
    expect(result.upstream.routes.map((r) => `${r.method} ${r.path}${r.roles ? ' refused' : ''}`)).toEqual([
      'GET /users/:uid/keys refused',
      'GET /users/:id/password refused',
      'GET /users/{id:int}/:field',
    ]);
  });

  it('a path item in another file, or an operation not imported, that a chosen route would serve is refused too', () => {
    const plan = unimported();
    const result = buildUpstream(plan, selectOperations(plan, ['getUser', 'deleteUser', 'getFile']), { id: 'users' });
    expect(result.upstream.routes.map((r) => `${r.method} ${r.path}${r.roles ? ' refused' : ''}`)).toEqual([
      'GET /users/me refused',
      'GET /users/admins refused',
      'GET /users/export refused',
      'DELETE /users/export refused',
      'GET /users/:id',
      'DELETE /users/:id',
      'GET /files/:name',
    ]);
    // Its operations are unknown: each method a chosen route serving it uses is refused.
    for (const method of ['GET', 'DELETE'])
      expect(warningsOf(result, `${method} /users/export`)).toEqual([
        `its path item is in another file (not read), but the route of ${method} /users/{id} would serve it: written as a route nobody may call ("roles": [], 403 forbidden)`,
      ]);
    expect(warningsOf(result, 'GET /users/admins')).toEqual([
      'not imported (served from its own server (https://admin.example.com); import it into an upstream of its own with --base-url), but the route of GET /users/{id} would serve it: written as a route nobody may call ("roles": [], 403 forbidden)',
    ]);
    // No template can refuse these alone (a literal `*` would be a wildcard): said, naming the route that serves them.
    expect(warningsOf(result, 'GET /files/*')).toEqual([
      'not imported (the literal segment "*" would match any remaining path in a Keyward template), and no route can refuse it alone (its path cannot be a template): the route of GET /files/{name} can serve its requests; check the API answers them as GET /files/{name}, or leave that out',
    ]);
    expect(warningsOf(result, 'GET /users/{first}.{last}')).toEqual([
      'not imported (the segment "{first}.{last}" holds 2 parameters; a Keyward template holds one per segment), and no route can refuse it alone (its path cannot be a template): the route of GET /users/{id} can serve its requests; check the API answers them as GET /users/{id}, or leave that out',
    ]);
    // Nothing to say: no request can take `/files/:latest` (the route step refuses a segment starting with ":"),
    // and no chosen route serves `/archive`.
    expect(warningsOf(result, 'GET /files/:latest')).toEqual([]);
    expect(result.warnings.filter((w) => w.operation?.includes('/archive')).map((w) => w.message)).toEqual([
      'skipped: its path item is in another file ("archive.yaml#/paths/~1archive"), which the import does not read',
    ]);

    // As start-up reads the file: `/users/export` is refused, `/users/123` still served.
    const [definition] = parseConfig(JSON.parse(JSON.stringify({ upstreams: { users: result.upstream } })), 'keyward.json');
    const upstream = buildRegistry([definition!], { USERS_API_KEY: randomSecret() }).get('users')!;
    for (const method of ['GET', 'DELETE']) {
      const exported = matchRoute(upstream, method, ['users', 'export']);
      expect(exported.route.template).toBe('/users/export');
      expectKeywardError(thrown(() => authorize(exported.route, exported.params, session)), 'forbidden');
    }
    expect(matchRoute(upstream, 'GET', ['users', '123']).route.template).toBe('/users/:id');
  });

  // A literal's percent-encoded unreserved characters are the same path (RFC 3986 §6.2.2.2): `%7Eadmin` is `~admin`.
  const encoded = () =>
    planImport({
      openapi: '3.1.0',
      info: { title: 'Files', version: '1' },
      servers: [{ url: 'https://api.example.com/v1' }],
      paths: {
        '/files/{name}': get('getFile', ['name']),
        '/files/%7Eadmin': get('adminFiles'),
        '/files/%21root': get('rootFiles'),
        '/files/{}': get('unnamed'),
        '/files/%7Eadmin/{name}%2Ejson': get('adminJson', ['name']),
      },
    });

  it('a literal segment with percent-encoded letters, digits or "-._~" is read decoded: imported, or refused for both spellings', () => {
    const plan = encoded();
    expect(operation(plan, 'GET /files/%7Eadmin').route?.path).toBe('/files/~admin');
    expect(operation(plan, 'GET /files/%7Eadmin/{name}%2Ejson').route?.path).toBe('/files/~admin/{name}.json');
    const result = buildUpstream(plan, selectOperations(plan, ['getFile']), { id: 'files' });
    expect(result.upstream.routes.map((r) => `${r.method} ${r.path}${r.roles ? ' refused' : ''}`)).toEqual([
      'GET /files/~admin refused',
      'GET /files/:name',
    ]);
    expect(warningsOf(result, 'GET /files/%7Eadmin')).toEqual([
      'not chosen, but the route of GET /files/{name} would serve it: written as a route nobody may call ("roles": [], 403 forbidden)',
    ]);
    // Through the fast lane's reading of the request target and the real matcher: both spellings are refused.
    const [definition] = parseConfig(JSON.parse(JSON.stringify({ upstreams: { files: result.upstream } })), 'keyward.json');
    const upstream = buildRegistry([definition!], { FILES_API_KEY: randomSecret() }).get('files')!;
    for (const target of ['/api/proxy/files/files/%7Eadmin', '/api/proxy/files/files/%7eadmin', '/api/proxy/files/files/~admin']) {
      const segments = parseProxyPath(target)!.target.path;
      const match = matchRoute(upstream, 'GET', segments);
      expect(match.route.template).toBe('/files/~admin');
      expectKeywardError(thrown(() => authorize(match.route, match.params, session)), 'forbidden');
    }
    expect(matchRoute(upstream, 'GET', parseProxyPath('/api/proxy/files/files/report.txt')!.target.path).route.template).toBe('/files/:name');
  });

  it('a literal segment that stays percent-encoded, or a parameter with no name, is not imported and is named with the route that serves it', () => {
    const plan = encoded();
    expect(operation(plan, 'GET /files/%21root').skipped).toMatch(/^the path cannot be a Keyward template/);
    expect(operation(plan, 'GET /files/{}').skipped).toBe('the segment "{}" holds a parameter with no name');
    const result = buildUpstream(plan, selectOperations(plan, ['getFile']), { id: 'files' });
    // `!root` (sent as `/files/!root`) is a request `/files/{name}` serves, which an upstream may read as `%21root`.
    for (const key of ['GET /files/%21root', 'GET /files/{}'])
      expect(warningsOf(result, key)).toEqual([
        `not imported (${operation(plan, key).skipped}), and no route can refuse it alone (its path cannot be a template): the route of GET /files/{name} can serve its requests; check the API answers them as GET /files/{name}, or leave that out`,
      ]);
  });

  it('choosing every operation refuses nothing', () => {
    const plan = users();
    const result = importAll(plan, 'users');
    expect(result.upstream.routes.some((r) => r.roles)).toBe(false);
    expect(result.warnings.filter((w) => w.message.startsWith('not chosen'))).toEqual([]);
  });
});

/** The response type of a one-operation document whose responses are `responses` (3.0 unless told). */
function responseOf(responses: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  const op = planImport(doc({ responses }, extra)).operations[0]!;
  return { response: op.route?.response, warnings: op.warnings };
}

const json = (schema: unknown) => ({ description: 'ok', content: { 'application/json': { schema } } });

describe('OpenAPI import: an integer path parameter is {name:int}', () => {
  const path = (name: string, schema: unknown) => ({ name, in: 'path', required: true, schema });
  const issues = (openapi: string, idSchema: unknown) =>
    planImport({
      openapi,
      info: { title: 'Issues', version: '1' },
      servers: [{ url: 'https://api.example.com/v1' }],
      components: { schemas: { IssueNumber: { type: 'integer', format: 'int64', description: 'The number' } } },
      paths: {
        '/issues/{issue_number}': { get: { operationId: 'getIssue', parameters: [path('issue_number', idSchema)], responses: { 200: { description: 'ok' } } } },
        '/issues/comments': { get: { operationId: 'listComments', responses: { 200: { description: 'ok' } } } },
        '/issues/events': { get: { operationId: 'listEvents', responses: { 200: { description: 'ok' } } } },
        '/pages/{slug}': { get: { operationId: 'getPage', parameters: [path('slug', { type: 'string' })], responses: { 200: { description: 'ok' } } } },
        '/scores/{value}': { get: { operationId: 'getScore', parameters: [path('value', { type: 'number' })], responses: { 200: { description: 'ok' } } } },
        '/files/v{n}.json': { get: { operationId: 'getVersion', parameters: [path('n', { type: 'integer' })], responses: { 200: { description: 'ok' } } } },
      },
    });

  it.each([
    ['3.0 type: integer', '3.0.3', { type: 'integer' }],
    ['3.0 nullable', '3.0.3', { type: 'integer', nullable: true }],
    ['3.1 type: [integer]', '3.1.0', { type: ['integer'] }],
    ['3.1 type: [integer, null]', '3.1.0', { type: ['integer', 'null'] }],
    ['a $ref', '3.1.0', { $ref: '#/components/schemas/IssueNumber' }],
  ])('%s', (_label, openapi, schema) => {
    const plan = issues(openapi, schema);
    const result = buildUpstream(plan, selectOperations(plan, ['getIssue', 'getPage', 'getScore', 'getVersion']), { id: 'issues' });
    expect(result.upstream.routes.map((r) => `${r.method} ${r.path}${r.roles ? ' refused' : ''}`)).toEqual([
      'GET /files/v{n:int}.json',
      'GET /issues/{issue_number:int}',
      'GET /pages/:slug',
      'GET /scores/:value',
    ]);
    // The lists beside it share no request with an integer: nothing to refuse, nothing to say about them.
    for (const key of ['GET /issues/comments', 'GET /issues/events']) expect(warningsOf(result, key)).toEqual([]);
    // An integer is checked as one; a number is not an integer (1.5), so it stays any segment, and says so.
    expect(warningsOf(result, 'GET /issues/{issue_number}').join('\n')).not.toContain('path parameters');
    expect(warningsOf(result, 'GET /scores/{value}')).toContain(
      'looser than the spec: path parameters are not type-checked (any one path segment is forwarded): value (number)',
    );

    // As start-up reads the written file: the lists match no route, an issue number does.
    const [definition] = parseConfig(JSON.parse(JSON.stringify({ upstreams: { issues: result.upstream } })), 'keyward.json');
    const upstream = buildRegistry([definition!], { ISSUES_API_KEY: randomSecret() }).get('issues')!;
    expect({ ...matchRoute(upstream, 'GET', ['issues', '12']).params }).toEqual({ issue_number: '12' });
    expectKeywardError(thrown(() => matchRoute(upstream, 'GET', ['issues', 'comments'])), 'route_not_found');
    expect(matchRoute(upstream, 'GET', ['files', 'v3.json']).params.n).toBe('3');
  });

  it('an untyped parameter chosen beside them still refuses them', () => {
    const plan = issues('3.1.0', { type: 'string' });
    const result = buildUpstream(plan, selectOperations(plan, ['getIssue']), { id: 'issues' });
    expect(result.upstream.routes.map((r) => `${r.method} ${r.path}${r.roles ? ' refused' : ''}`)).toEqual([
      'GET /issues/comments refused',
      'GET /issues/events refused',
      'GET /issues/:issue_number',
    ]);
  });

  it('an integer parameter with bounds is checked as an integer, and its bounds are said to be left out', () => {
    const plan = issues('3.0.3', { type: 'integer', minimum: 1 });
    const result = buildUpstream(plan, selectOperations(plan, ['getIssue']), { id: 'issues' });
    expect(result.upstream.routes.map((r) => r.path)).toEqual(['/issues/{issue_number:int}']);
    expect(warningsOf(result, 'GET /issues/{issue_number}')).toContain(
      'looser than the spec: path parameters are not type-checked (any one path segment is forwarded): issue_number (integer: only its bounds are not checked)',
    );
  });
});

describe('OpenAPI import: the response type (the typed client answer, types only)', () => {
  it("is the success answers' one JSON body; none without one (a 204, XML only), said for nothing", () => {
    const item = { type: 'object', properties: { id: { type: 'string' } }, required: ['id'] };
    const list = { type: 'array', items: { type: 'integer' } };
    // Successes that agree (a 204 has no body: the typed client answers undefined); errors and default do not count.
    expect(
      responseOf({ '201': json(item), '200': json(item), '204': { description: 'gone' }, default: json(list) })
        .response,
    ).toEqual(item);
    expect(responseOf({ '2XX': json(list) }).response).toEqual(list);
    // A `$ref` to components/responses, and a `+json` media type with parameters.
    const shared = responseOf(
      { '200': { $ref: '#/components/responses/Item' }, '201': json(item) },
      {
        components: {
          responses: {
            Item: { description: 'ok', content: { 'application/vnd.api+json; charset=utf-8': { schema: item } } },
          },
        },
      },
    );
    expect(shared.response).toEqual(item);
    for (const responses of [
      { '204': { description: 'no content' } },
      { '200': { description: 'xml', content: { 'application/xml': { schema: item } } } },
      { '400': json(item), default: json(item) },
      {},
    ]) {
      const { response, warnings } = responseOf(responses);
      expect(response).toBeUndefined();
      expect(warnings.join('\n')).not.toContain('response');
    }
  });

  it('is unknown, said, when the successes differ: a type for one status would claim more than another answers', () => {
    const item = { type: 'object', properties: { id: { type: 'string' } } };
    for (const responses of [
      { '200': json(item), '202': json({ type: 'object', properties: { job: { type: 'string' } } }) },
      { '200': json(item), '2XX': json({ type: 'string' }) },
      { '200': json(item), '206': { description: 'part', content: { 'application/octet-stream': {} } } },
    ]) {
      const { response, warnings } = responseOf(responses);
      expect(response).toBeUndefined();
      expect(warnings.join('\n')).toMatch(
        /the response is typed unknown: the success answers \(.+\) do not all have the same JSON body/,
      );
    }
  });

  it('a response the import cannot read costs the route its type, not the import', () => {
    const dangling = planImport(doc({ responses: { '200': { $ref: '#/components/responses/Missing' } } }));
    const op = dangling.operations[0]!;
    expect(op.route).not.toBeNull();
    expect(op.route!.response).toBeUndefined();
    expect(op.warnings.join('\n')).toContain(
      'the response is typed unknown: the OpenAPI document is invalid at #/paths/~1things/post/responses/200/$ref',
    );
    const malformed = planImport(doc({ responses: ['not', 'an', 'object'] })).operations[0]!;
    expect(malformed.route).not.toBeNull();
    expect(malformed.route!.response).toBeUndefined();
  });

  it('leaves out fields that may be null or cannot be typed, required or not, and says so; keeps readOnly, drops writeOnly', () => {
    const { response, warnings } = responseOf(
      {
        '200': json({
          type: 'object',
          required: ['id', 'note', 'meta', 'kind', 'owner'],
          properties: {
            id: { type: 'string', readOnly: true },
            password: { type: 'string', writeOnly: true },
            secret: { oneOf: [{ type: 'string' }, { type: 'integer' }], writeOnly: true },
            note: { type: 'string', nullable: true },
            meta: { type: 'object', additionalProperties: { type: 'string' } },
            kind: { oneOf: [{ type: 'string' }, { type: 'integer' }] },
            owner: { allOf: [{ $ref: '#/components/schemas/User' }], nullable: true },
            color: { type: 'string', enum: ['red', null] },
            tags: { type: 'array', items: { type: 'string', nullable: true } },
            size: { type: 'integer' },
          },
        }),
      },
      { components: { schemas: { User: { type: 'object', properties: { name: { type: 'string' } } } } } },
    );
    expect(response).toEqual({
      type: 'object',
      properties: { id: { type: 'string' }, size: { type: 'integer' } },
      required: ['id'],
    });
    const said = warnings.join('\n');
    expect(said).toContain('the response type leaves out what it cannot say (the typed client does not show them)');
    for (const field of ['note', 'owner', 'color', 'tags[]']) expect(said).toContain(`response.${field}: may be null`);
    expect(said).toContain('response.meta: a map');
    expect(said).toContain('response.kind: "oneOf"');
    expect(said).not.toMatch(/password|secret/);
    // What a request contract says of its schemas (null refused, looser checks) is not said of a type.
    expect(said).not.toContain('stricter than the spec');
  });

  it('3.1: `type: [..., "null"]` and a oneOf with null are nullable too; a nullable or untyped whole answer is unknown, said', () => {
    const v31 = { openapi: '3.1.0' };
    const fields = responseOf(
      {
        '200': json({
          type: 'object',
          properties: {
            a: { type: ['string', 'null'] },
            b: { oneOf: [{ type: 'integer' }, { type: 'null' }] },
            c: { type: 'boolean' },
            d: {
              anyOf: [
                { type: 'string', enum: ['x'] },
                { type: ['string', 'null'], enum: ['y', null] },
              ],
            },
          },
        }),
      },
      v31,
    );
    expect(fields.response).toEqual({ type: 'object', properties: { c: { type: 'boolean' } } });
    expect(fields.warnings.join('\n')).toContain('response.d: may be null');
    const nullable = responseOf(
      { '200': json({ type: ['object', 'null'], properties: { c: { type: 'boolean' } } }) },
      v31,
    );
    expect(nullable.response).toBeUndefined();
    expect(nullable.warnings).toContain(
      'the response is typed unknown: response: may be null, which a contract type cannot say',
    );
    const union = responseOf({ '200': json({ oneOf: [{ type: 'string' }, { type: 'object', properties: {} }] }) });
    expect(union.response).toBeUndefined();
    expect(union.warnings.join('\n')).toContain('the response is typed unknown: response: "oneOf"');
    // A broken response schema (Swagger 2's boolean `required`) costs the type, not the import.
    const broken = responseOf({
      '200': json({ type: 'object', required: true, properties: { a: { type: 'string' } } }),
    });
    expect(broken.response).toBeUndefined();
    expect(broken.warnings.join('\n')).toContain(
      'the response is typed unknown: the OpenAPI document is invalid at #/paths/~1things/post/responses/200/content/application~1json/schema/required',
    );
  });

  it('is valid route config: start-up reads it back as written', () => {
    const plan = planImport(
      doc({
        responses: {
          '200': json({
            type: 'object',
            properties: {
              id: { type: 'string' },
              count: { type: 'integer' },
              state: { type: 'string', enum: ['on', 'off'] },
            },
            required: ['id'],
          }),
        },
      }),
    );
    const result = buildUpstream(plan, importableOperations(plan), { id: 'things' });
    const [definition] = parseConfig({ upstreams: { things: result.upstream } }, 'test');
    expect(definition!.config.routes[0]!.response).toEqual(result.upstream.routes[0]!.response);
  });
});

describe('OpenAPI import: a bad document names the JSON pointer of the problem', () => {
  it('not OpenAPI 3', () => {
    expect(configError(() => planImport({ swagger: '2.0' }))).toContain(
      '#/swagger: Swagger 2.0 documents are not read',
    );
    expect(configError(() => planImport({ openapi: '4.0.0' }))).toContain(
      '#/openapi: must be an OpenAPI 3.0 or 3.1 version',
    );
    expect(configError(() => planImport([]))).toContain('at #: must be an object');
  });

  it('a bad parameter, schema, $ref, security requirement or server variable', () => {
    expect(configError(() => planImport(doc({ parameters: [{ name: 'q', in: 'body' }] })))).toContain(
      '#/paths/~1things/post/parameters/0/in: must be',
    );
    expect(
      configError(() => planImport(doc({ requestBody: { content: { 'application/json': { schema: { type: 5 } } } } }))),
    ).toContain('#/paths/~1things/post/requestBody/content/application~1json/schema/type: must be a type name');
    expect(configError(() => planImport(doc({ requestBody: { $ref: '#/components/requestBodies/Missing' } })))).toBe(
      'the OpenAPI document is invalid at #/paths/~1things/post/requestBody/$ref: "#/components/requestBodies/Missing" does not resolve to anything in the document',
    );
    // Object.prototype is not the document: "constructor" resolves to nothing.
    expect(
      configError(() =>
        planImport(
          doc(
            { requestBody: { content: { 'application/json': { schema: { $ref: '#/components/constructor' } } } } },
            { components: {} },
          ),
        ),
      ),
    ).toContain('does not resolve');
    const undeclared = planImport(doc({ security: [{ Missing: [] }], responses: {} }));
    expect(configError(() => buildUpstream(undeclared, importableOperations(undeclared), { id: 'x' }))).toContain(
      '#/paths/~1things/post/security: names the security scheme "Missing"',
    );
    expect(configError(() => planImport({ ...doc({}), servers: [{ url: 'https://{host}/v1' }] }))).toContain(
      '#/servers/0/url: uses the variable "host"',
    );
  });

  it('a document nested thousands deep is refused naming where, not a stack overflow', () => {
    for (const wrap of [(inner: unknown) => ({ type: 'object', properties: { a: inner } }), (inner: unknown) => ({ type: 'array', items: inner })]) {
      let schema: unknown = { type: 'string' };
      for (let i = 0; i < 3_000; i++) schema = wrap(schema);
      const deep = doc({ requestBody: { content: { 'application/json': { schema } } }, responses: { '200': { description: 'ok', content: { 'application/json': { schema } } } } });
      expect(configError(() => planImport(deep))).toMatch(
        /^the OpenAPI document is invalid at #\/paths\/~1things\/post\/(requestBody|responses\/200)\/content\/application~1json\/schema(\/(properties|a|items))+: nested more than 200 levels deep/,
      );
    }
  });

  it('a chain of thousands of $refs is a reason, not a stack overflow', () => {
    const schemas: Record<string, unknown> = { S2999: { type: 'string' } };
    for (let i = 0; i < 2_999; i++) schemas[`S${i}`] = { type: 'object', properties: { next: { $ref: `#/components/schemas/S${i + 1}` } } };
    const chain = bodyOf({ $ref: '#/components/schemas/S0' }, schemas);
    expect(chain.warnings.join('\n')).toContain('the schema is nested too deep to convert (over 96 levels)');
  });

  it('a body a contract can hold converts whole, however its levels are spelt (nullable $refs: three conversions a level)', () => {
    const schemas: Record<string, unknown> = { N12: { type: 'object', properties: { leaf: { type: 'string' } } } };
    for (let i = 0; i < 12; i++) {
      schemas[`N${i}`] = { type: 'object', properties: { child: { anyOf: [{ $ref: `#/components/schemas/N${i + 1}` }, { type: 'null' }] } } };
    }
    const plan = planImport({
      ...doc({ requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/N0' } } } } }),
      openapi: '3.1.0',
      components: { schemas },
    });
    expect(plan.operations[0]!.warnings.join('\n')).not.toContain('nested too deep');
  });

  it('text that is neither JSON nor YAML', () => {
    expect(configError(() => parseSpecText('{"openapi": ', 'api.json'))).toContain('api.json is not valid JSON');
    expect(configError(() => parseSpecText('a: 1\na: 2\n', 'api.yaml'))).toContain('api.yaml is not valid YAML');
  });
});
