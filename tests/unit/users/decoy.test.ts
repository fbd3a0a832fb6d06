import * as crypto from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { loadUsersFile } from '../../../lib/core/users/file';
import { randomSecret } from '../../fixtures/secrets';
import { writeUsersFile } from '../../fixtures/users';

// scrypt counted where password.ts calls it (the real one runs): how much work a sign-in costs, not how long.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return { ...actual, scrypt: vi.fn(actual.scrypt) };
});

describe('an unknown username costs what a wrong password costs: one scrypt', () => {
  it('from the first attempt of the process on (the decoy hash is not made on first use)', async () => {
    const path = await writeUsersFile([{ username: 'alice', password: randomSecret('alice-pw'), roles: ['user'] }]);
    const users = loadUsersFile(path);
    const scrypt = vi.mocked(crypto.scrypt);
    const cost = async (username: string) => {
      scrypt.mockClear();
      expect(await users.authenticate(username, randomSecret('guess'))).toBeNull();
      return scrypt.mock.calls.length;
    };
    expect(await cost('nobody')).toBe(1);
    expect(await cost('alice')).toBe(1);
    expect(await cost('someone-else')).toBe(1);
  }, 30_000);
});
