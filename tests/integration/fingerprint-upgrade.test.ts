import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { keyFingerprints, legacyFingerprint } from '../../lib/core/keys/fingerprint';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { Vault } from '../../lib/core/vault/seal';
import { capturingLogger } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { storedRingVersion } from '../fixtures/ring-state';

/**
 * Keyed fingerprints (issue 11) and state stored before them: key-ring records name versions by the old,
 * unkeyed fingerprint. A revoked environment key must stay revoked, and a managed version must keep serving
 * and not be added twice, although the fingerprints computed now are different. Nothing rewrites the old
 * records. A runtime with the memory store stands for an instance upgraded in place.
 */
const DAY_MS = 86_400_000;
const secrets = testSessionSecrets();
const vaultSecret = randomSecret('vault');
const envKey = randomSecret('env');
const managedKey = randomSecret('managed');
const now = Date.now();
let runtime: Runtime;

beforeAll(async () => {
  runtime = createRuntime({
    env: { ...secrets, KEYWARD_STORE: 'memory', KEYWARD_VAULT_SECRET: vaultSecret, SVC_KEY: envKey },
    upstreams: [
      defineUpstream('svc', {
        baseUrl: 'http://127.0.0.1:9/v1/',
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
    ],
    logger: capturingLogger().logger,
  });
  // What an earlier Keyward wrote: the env key revoked, a managed key active, both under unkeyed fingerprints.
  const managedId = `managed:${legacyFingerprint(managedKey)}`;
  await runtime.store.set(
    'keyring:svc',
    JSON.stringify({
      rev: 2,
      versions: [
        storedRingVersion({ id: 'env:SVC_KEY', fingerprint: legacyFingerprint(envKey), source: 'env', state: 'revoked', revokedAt: now - DAY_MS }),
        storedRingVersion({ id: managedId, fingerprint: legacyFingerprint(managedKey), source: 'managed', created: now - DAY_MS, expiresAt: now + 30 * DAY_MS, state: 'active', activatedAt: now - DAY_MS }),
      ],
      rotations: [],
    }),
  );
  await runtime.store.set(`keyval:svc:${managedId}`, await new Vault(vaultSecret).seal({ value: managedKey }));
});

afterAll(async () => {
  await (runtime?.dispatcher as { close?: () => Promise<void> } | undefined)?.close?.().catch(() => {});
  await runtime?.store.close();
});

describe('key-ring state stored under unkeyed fingerprints', () => {
  it('fingerprints computed now are keyed (they differ from the stored ones)', () => {
    expect(keyFingerprints(secrets.KEYWARD_SESSION_SECRET).of(envKey)).not.toBe(legacyFingerprint(envKey));
  });

  it('the revoked environment key stays revoked and the managed key serves', async () => {
    const credential = await runtime.keyRings.credential(runtime.registry.get('svc')!);
    expect(credential.secrets[0]).toBe(managedKey);
    const [ring] = await runtime.keyRings.list();
    const env = ring!.versions.find((v) => v.id === 'env:SVC_KEY')!;
    expect(env.state).toBe('revoked');
    // Shown with the fingerprint computed now; the managed version keeps the one it was stored with.
    expect(env.fingerprint).toBe(keyFingerprints(secrets.KEYWARD_SESSION_SECRET).of(envKey));
    expect(ring!.versions.find((v) => v.source === 'managed')!.fingerprint).toBe(legacyFingerprint(managedKey));
  });

  it('adding the managed key again finds the stored version instead of adding a copy', async () => {
    const again = await runtime.keyRings.add('svc', managedKey);
    expect(again.id).toBe(`managed:${legacyFingerprint(managedKey)}`);
    const [ring] = await runtime.keyRings.list();
    expect(ring!.versions.filter((v) => v.source === 'managed')).toHaveLength(1);
  });
});

describe('rotating KEYWARD_SESSION_SECRET', () => {
  it('a managed key added before the rotation keeps serving after it (its seal names its version)', async () => {
    const before = createRuntime({
      env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', KEYWARD_VAULT_SECRET: vaultSecret, SVC_KEY: envKey },
      upstreams: [
        defineUpstream('other', {
          baseUrl: 'http://127.0.0.1:9/v1/',
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        }),
      ],
      logger: capturingLogger().logger,
    });
    const fresh = randomSecret('fresh');
    const rotation = await before.keyRings.rotate('other', fresh, { skipCanary: true, actor: 'local:root' });
    expect(rotation.state).toBe('switched');
    expect((await before.keyRings.credential(before.registry.get('other')!)).secrets[0]).toBe(fresh);

    // The same store and vault, a new session secret: every fingerprint computed now is different.
    const after = createRuntime({
      env: { ...testSessionSecrets(), KEYWARD_VAULT_SECRET: vaultSecret, SVC_KEY: envKey },
      upstreams: [
        defineUpstream('other', {
          baseUrl: 'http://127.0.0.1:9/v1/',
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        }),
      ],
      store: before.store,
      logger: capturingLogger().logger,
    });
    expect(after.registry.get('other')!.fingerprints.of(fresh)).not.toBe(rotation.to);
    expect((await after.keyRings.credential(after.registry.get('other')!)).secrets[0]).toBe(fresh);
    for (const r of [before, after]) await (r.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
    await before.store.close();
  });
});
