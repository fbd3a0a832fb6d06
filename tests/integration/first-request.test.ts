import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, expect, it } from 'vitest';
import { freePort } from '../fixtures/app-server';
import { uncalledUpstream } from '../fixtures/config';
import { REDIS_URL } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile } from '../fixtures/users';

/**
 * A fresh `next start` instance on Redis whose very first request is a sign-in (what a load balancer sends a
 * new instance): it must be answered (302), never 503 store_unavailable because the store's connection is
 * still being made. The server is only waited for until its port accepts connections: no HTTP warm-up.
 */
const prefix = `keyward-test:first:${randomUUID()}:`;
let child: ChildProcess | undefined;
afterAll(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
  await deleteKeysUnder(REDIS_URL, prefix);
});

async function listening(port: number): Promise<void> {
  for (;;) {
    if (child!.exitCode !== null) throw new Error('next start exited');
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => (socket.destroy(), resolve(true)));
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

it("a fresh instance's first request, a sign-in, is answered (not 503 while Redis connects)", async () => {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '',
    NODE_ENV: 'production' as const,
    NEXT_TELEMETRY_DISABLED: '1',
    ...(process.env.KEYWARD_DIST_DIR ? { KEYWARD_DIST_DIR: process.env.KEYWARD_DIST_DIR } : {}),
    AUTH_TRUST_HOST: 'true',
    ...testSessionSecrets(),
    KEYWARD_USERS_FILE: await writeUsersFile([{ username: 'alice', password: 'correct horse', roles: ['user'] }]),
    ...uncalledUpstream(),
    REDIS_URL,
    KEYWARD_REDIS_PREFIX: prefix,
  };
  const next = join(process.cwd(), 'node_modules', 'next', 'dist', 'bin', 'next');
  child = spawn(process.execPath, [next, 'start', '-p', String(port), '-H', '127.0.0.1'], { env, stdio: 'ignore' });
  await listening(port);
  const response = await fetch(`http://localhost:${port}/api/auth/callback/credentials`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ csrfToken: 'none', username: 'alice', password: 'wrong', callbackUrl: '/' }),
  });
  const body = await response.text();
  // Auth.js's answer to a sign-in without its CSRF token: a redirect, having reached the limiter and Auth.js.
  expect(response.status, body).toBe(302);
});
