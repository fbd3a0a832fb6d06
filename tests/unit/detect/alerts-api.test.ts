import { afterAll, describe, expect, it, vi } from 'vitest';
import { handleAlertUndo, handleAlerts } from '../../../lib/core/api/alerts';
import { createLogger } from '../../../lib/core/log/logger';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { testSessionSecrets } from '../../fixtures/secrets';
import { bearerToken } from '../../fixtures/session';

/** GET /api/admin/alerts's cursor, on the real runtime and handler over the in-memory store (its cursors: 16 digits). */
const secrets = testSessionSecrets();
const runtime = createRuntime({ env: { ...secrets, KEYWARD_STORE: 'memory' }, store: new MemoryStore(), upstreams: [], logger: createLogger({ level: 'silent' }) });
afterAll(() => runtime.store.close());

async function alerts(query: string): Promise<Response> {
  const token = await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'local:root', roles: ['admin'] });
  return handleAlerts(new Request(`https://app.keyward.test/api/admin/alerts?${query}`, { headers: { authorization: `Bearer ${token}` } }), runtime);
}

describe('GET /api/admin/alerts?cursor=', () => {
  it('a cursor not of the form this store gives is 400, not read as none (which would start the pages over, unnoticed)', async () => {
    for (const cursor of ['abc', '1700000000000-0', '12345', `${'1'.repeat(16)}0`]) {
      const response = await alerts(`cursor=${cursor}`);
      expect(response.status, cursor).toBe(400);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('bad_request');
    }
    expect((await alerts(`cursor=${'1'.repeat(16)}`)).status).toBe(200);
  });
});

describe('GET /api/admin/alerts: repeated parameters', () => {
  it('a parameter given twice is 400, as the audit and usage APIs answer it, never one copy silently chosen', async () => {
    for (const query of ['limit=1&limit=200', `cursor=${'1'.repeat(16)}&cursor=${'2'.repeat(16)}`, 'limit=5&limit=5']) {
      const response = await alerts(query);
      expect(response.status, query).toBe(400);
      const { error } = (await response.json()) as { error: { code: string; message: string } };
      expect(error.code, query).toBe('bad_request');
      expect(error.message, query).toMatch(/given more than once/);
    }
    expect((await alerts('limit=5')).status).toBe(200);
  });
});

describe('POST /api/admin/alerts/<id>/undo', () => {
  it("undoing an alert already undone changes nothing: the detector's state on this instance is not reset again", async () => {
    runtime.detector.decoyHit({ kind: 'credential', decoyId: 'dk_1', where: 'header:x-api-key', userId: 'local:mallory', sessionId: 's1', ip: '203.0.113.66', upstream: 'openai', route: null, requestId: 'r1' });
    await runtime.detector.settled();
    const [alert] = (await runtime.alerts.list({ limit: 10 })).alerts;
    const forget = vi.spyOn(runtime.detector, 'forget');
    const token = await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'local:root', roles: ['admin'] });
    const undo = () => handleAlertUndo(new Request(`https://app.keyward.test/api/admin/alerts/${alert!.id}/undo`, { method: 'POST', headers: { authorization: `Bearer ${token}` } }), alert!.id, runtime);
    for (let i = 0; i < 2; i++) expect((await undo()).status).toBe(200);
    expect(forget).toHaveBeenCalledTimes(1);
  });
});
