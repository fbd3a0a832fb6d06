import { describe, expect, it } from 'vitest';
import { KeywardError, parseRetryAfter, readKeywardError } from '../../../lib/client/errors';

const ID = '0b6f7c9e-1d2a-4c3b-8e9f-0a1b2c3d4e5f';

function answer(status: number, body: unknown, headers: Record<string, string> = { 'x-request-id': ID }): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json; charset=utf-8', ...headers } });
}

describe('parseRetryAfter (RFC 9110 §10.2.3)', () => {
  it('reads delay-seconds and HTTP-dates, never negative', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfter('120', now)).toBe(120);
    expect(parseRetryAfter(' 0 ', now)).toBe(0);
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:01:30 GMT', now)).toBe(90);
    expect(parseRetryAfter('Wed, 31 Dec 2025 23:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter(null, now)).toBeNull();
    expect(parseRetryAfter('soon', now)).toBeNull();
    expect(parseRetryAfter('-5', now)).toBeNull();
  });
});

describe('readKeywardError', () => {
  it("reads Keyward's error, with status, request id and Retry-After", async () => {
    const error = await readKeywardError(answer(429, { error: { code: 'rate_limited', message: 'Too many requests.', requestId: ID } }, { 'x-request-id': ID, 'retry-after': '30' }));
    expect(error).toBeInstanceOf(KeywardError);
    expect(error).toMatchObject({ name: 'KeywardError', code: 'rate_limited', status: 429, requestId: ID, retryAfter: 30, message: 'Too many requests.' });
  });

  it('connection_required carries connectUrl (a path of Keyward\'s); no other code may, and no other URL', async () => {
    const error = await readKeywardError(answer(403, { error: { code: 'connection_required', message: 'Connect your GitHub account first (connectUrl).', requestId: ID, connectUrl: '/api/connect/github' } }));
    expect(error).toMatchObject({ code: 'connection_required', status: 403, connectUrl: '/api/connect/github' });
    expect(await readKeywardError(answer(403, { error: { code: 'connection_required', message: 'x', requestId: ID, connectUrl: 'https://evil.test/' } }))).toBeNull();
    expect(await readKeywardError(answer(403, { error: { code: 'forbidden', message: 'x', requestId: ID, connectUrl: '/api/connect/github' } }))).toBeNull();
    expect((await readKeywardError(answer(403, { error: { code: 'forbidden', message: 'x', requestId: ID } })))!.connectUrl).toBeNull();
  });

  it('leaves the body readable when the answer is not Keyward\'s error', async () => {
    const response = answer(400, { error: { message: 'bad', type: 'invalid_request_error', code: 'x' } });
    expect(await readKeywardError(response)).toBeNull();
    expect(await response.json()).toEqual({ error: { message: 'bad', type: 'invalid_request_error', code: 'x' } });
  });

  it('is not fooled by a lookalike: another request id, extra fields, a non-JSON type, a 2xx', async () => {
    const body = { error: { code: 'forbidden', message: 'no', requestId: ID } };
    expect(await readKeywardError(answer(403, body, { 'x-request-id': 'another' }))).toBeNull();
    expect(await readKeywardError(answer(403, body, {}))).toBeNull();
    expect(await readKeywardError(answer(403, { ...body, detail: 1 }))).toBeNull();
    expect(await readKeywardError(answer(403, { error: { ...body.error, param: null } }))).toBeNull();
    expect(await readKeywardError(answer(403, { error: { ...body.error, code: 'Not A Code' } }))).toBeNull();
    expect(await readKeywardError(new Response(JSON.stringify(body), { status: 403, headers: { 'content-type': 'text/plain', 'x-request-id': ID } }))).toBeNull();
    expect(await readKeywardError(answer(200, body))).toBeNull();
    expect(await readKeywardError(new Response('{not json', { status: 500, headers: { 'content-type': 'application/json' } }))).toBeNull();
  });

  it("reads the fast lane's last-resort 500, which has no request id", async () => {
    const error = await readKeywardError(answer(500, { error: { code: 'internal_error', message: 'Keyward failed to handle the request.', requestId: null } }, {}));
    expect(error).toMatchObject({ code: 'internal_error', status: 500, requestId: null });
  });
});
