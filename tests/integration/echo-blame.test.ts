import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import type { Alert } from '../../lib/core/detect/alerts';
import type { ProxyEvent } from '../../lib/core/pipeline';
import { randomSecret } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { createHarness, type Harness } from './harness';

/**
 * An upstream that echoes a secret other than the key its call was made with: the client gets [REDACTED] as for
 * its own key, and the server names the secret that was echoed (never its value): another upstream's service key
 * by that upstream and fingerprint (its version's scrubber hits on the Keys page, its alert's rotation hint), a
 * Keyward setting by its name. A real loopback upstream (`dump`) answers with whatever the path asks for.
 */
let harness: Harness;
let dump: TestUpstream;
const alphaKey = randomSecret('alpha');
const gammaKey = randomSecret('gamma');

beforeAll(async () => {
  dump = await startUpstream((req, res) => {
    const what = (req.url ?? '').split('/').at(-1);
    const leaked =
      what === 'gamma' ? gammaKey : what === 'session' ? harness.env.KEYWARD_SESSION_SECRET! : what === 'own' ? String(req.headers['x-api-key']) : 'nothing';
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ env: { VALUE: leaked } }));
  });
  const routes = [{ method: 'GET' as const, path: '/leak/:what' }];
  harness = await createHarness({
    secretEnv: { ALPHA_KEY: alphaKey, GAMMA_KEY: gammaKey },
    upstreams: () => [
      defineUpstream('alpha', { baseUrl: `${dump.origin}/`, auth: { type: 'header', name: 'x-api-key', secret: { env: 'ALPHA_KEY' } }, routes }),
      defineUpstream('gamma', { baseUrl: `${dump.origin}/`, auth: { type: 'header', name: 'x-api-key', secret: { env: 'GAMMA_KEY' } }, routes }),
    ],
    // Each test's calls come from users of their own, so one test's alerts stay apart from another's.
    detector: { cooldownMinutes: 1 },
  });
});

afterAll(async () => {
  await harness?.close();
  await dump?.close();
});

function fingerprintOf(upstream: string): string {
  const plan = harness.runtime.registry.get(upstream)!.credential;
  if (plan.source !== 'static') throw new Error('a service key');
  return plan.credential.fingerprint;
}

async function leak(what: string): Promise<{ body: unknown; event: ProxyEvent }> {
  const before = harness.logs.length;
  const result = await harness.call(['leak', what], { upstream: 'alpha' });
  expect(result.response.status).toBe(200);
  await harness.runtime.detector.settled();
  const line = harness.logs
    .slice(before)
    .map((text) => JSON.parse(text) as { proxy?: ProxyEvent })
    .find((entry) => entry.proxy?.route === '/leak/:what');
  return { body: result.json(), event: line!.proxy! };
}

async function echoAlerts(): Promise<Alert[]> {
  const { alerts } = await harness.runtime.alerts.list({ limit: 100 });
  return alerts.filter((alert) => alert.rule === 'scrubber_hits');
}

describe('a scrubber hit names the secret that was echoed', () => {
  it("another upstream's service key: named by that upstream and its fingerprint, on its version's hits and its alert", async () => {
    const { body, event } = await leak('gamma');
    expect(body).toEqual({ env: { VALUE: '[REDACTED]' } });
    expect(event.scrubberHits).toBe(1);
    expect(event.keyFingerprint).toBe(fingerprintOf('alpha'));
    expect(event.echoed).toEqual([{ kind: 'key', upstream: 'gamma', fingerprint: fingerprintOf('gamma'), hits: 1 }]);

    const [alert] = await echoAlerts();
    expect(alert).toMatchObject({
      rule: 'scrubber_hits',
      action: 'alert',
      subject: { upstream: 'gamma', fingerprint: fingerprintOf('gamma') },
      evidence: { hits: 1, route: '/leak/:what', credential: 'service-key', echoedBy: 'alpha' },
    });
    expect(alert!.reason).toContain(`alpha echoed gamma's key ${fingerprintOf('gamma')}`);
    expect(alert!.reason).toMatch(/Rotate this key/);
    expect(alert!.reason).not.toContain(fingerprintOf('alpha'));

    // The Keys page's figures (the `key` rollup): the hit is on gamma's version, none on alpha's.
    await harness.runtime.audit.flush();
    const now = Date.now();
    const month = await harness.runtime.usage.top({ period: 'day', fromMs: now - 86_400_000, toMs: now, by: 'keyVersion', limit: 100 });
    const hitsOf = (upstream: string) => month.find((row) => row.upstream === upstream && row.keyVersion === fingerprintOf(upstream))?.scrubberHits ?? 0;
    expect(hitsOf('gamma')).toBe(1);
    expect(hitsOf('alpha')).toBe(0);
    // The upstream's own figures still count what its answers were scrubbed of.
    const upstreams = await harness.runtime.usage.top({ period: 'day', fromMs: now - 86_400_000, toMs: now, by: 'upstream', limit: 100 });
    expect(upstreams.find((row) => row.upstream === 'alpha')?.scrubberHits).toBe(1);
  });

  it('a Keyward setting: named by its variable, with advice to change it; no key is blamed', async () => {
    const { body, event } = await leak('session');
    expect(body).toEqual({ env: { VALUE: '[REDACTED]' } });
    expect(event.echoed).toEqual([{ kind: 'setting', setting: 'KEYWARD_SESSION_SECRET', hits: 1 }]);
    const alert = (await echoAlerts()).find((a) => a.evidence.credential === 'setting')!;
    expect(alert).toMatchObject({ subject: { upstream: 'alpha' }, evidence: { hits: 1, credential: 'setting', setting: 'KEYWARD_SESSION_SECRET' } });
    expect(alert.subject.fingerprint).toBeUndefined();
    expect(alert.reason).toContain('KEYWARD_SESSION_SECRET');
    expect(alert.reason).toMatch(/Change KEYWARD_SESSION_SECRET/);
    expect(alert.reason).not.toMatch(/Rotate this key/);
    expect(alert.reason).not.toContain(fingerprintOf('alpha'));
  });

  it('its own key: blamed on the key the call used, as before', async () => {
    const { body, event } = await leak('own');
    expect(body).toEqual({ env: { VALUE: '[REDACTED]' } });
    expect(event.echoed).toEqual([{ kind: 'credential', hits: 1 }]);
    const alert = (await echoAlerts()).find((a) => a.subject.upstream === 'alpha' && a.subject.fingerprint !== undefined)!;
    expect(alert).toMatchObject({ subject: { upstream: 'alpha', fingerprint: fingerprintOf('alpha') }, evidence: { credential: 'service-key' } });
    expect(alert.reason).toContain(`alpha echoed key ${fingerprintOf('alpha')}`);
    const listed = JSON.stringify(await echoAlerts());
    for (const secret of harness.secrets) expect(listed.includes(secret)).toBe(false);
  });
});
