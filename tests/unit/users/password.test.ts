import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decoyHash, hashPassword, isPasswordHash, passwordWorkDone, strongestHash, verifyPassword } from '../../../lib/core/users/password';
import { SCRYPT_TIMEOUT, cheapPasswordHash as cheapHash, rejected } from '../support';

const randomPassword = () => randomBytes(12).toString('base64url');

describe('hashPassword / verifyPassword', () => {
  const password = randomPassword();
  const hashed = hashPassword(password);

  it(
    'round-trips and uses the documented format with OWASP parameters',
    async () => {
      const hash = await hashed;
      expect(hash).toMatch(/^scrypt\$131072\$8\$1\$[A-Za-z0-9_-]+\$[A-Za-z0-9_-]+$/);
      expect(hash).not.toContain(password);
      expect(isPasswordHash(hash)).toBe(true);
      expect(await verifyPassword(password, hash)).toBe(true);
      expect(await verifyPassword(randomPassword(), hash)).toBe(false);
    },
    SCRYPT_TIMEOUT,
  );

  it('refuses near misses of the right password', async () => {
    const pw = randomPassword();
    const hash = cheapHash(pw);
    expect(await verifyPassword(pw, hash)).toBe(true);
    for (const wrong of [`${pw} `, pw.slice(0, -1), `${pw.toUpperCase()}x`, '']) {
      expect(await verifyPassword(wrong, hash)).toBe(false);
    }
  });

  it('compares passwords Unicode-normalised (NFKC): composed or decomposed accents, full-width letters', async () => {
    const composed = `caf\u00e9-${randomPassword()}`;
    const decomposed = composed.normalize('NFD');
    expect(decomposed).not.toBe(composed);
    const hash = await hashPassword(decomposed);
    expect(await verifyPassword(composed, hash)).toBe(true);
    expect(await verifyPassword(decomposed, hash)).toBe(true);
    const fullWidth = `\uff30\uff41\uff53\uff53-${randomPassword()}`; // "Ｐａｓｓ"
    const plain = fullWidth.normalize('NFKC');
    expect(plain.startsWith('Pass-')).toBe(true);
    expect(await verifyPassword(plain, await hashPassword(fullWidth))).toBe(true);
    // Still one password: another letter is another password.
    expect(await verifyPassword(composed.replace('\u00e9', 'e'), hash)).toBe(false);
  }, SCRYPT_TIMEOUT);

  it('a hash made before normalising (of the password as typed then) still verifies, as typed; nothing else does', async () => {
    const typed = `cafe\u0301-${randomPassword()}`; // decomposed "é"
    const legacy = cheapHash(typed);
    expect(await verifyPassword(typed, legacy)).toBe(true);
    expect(await verifyPassword(`${typed}x`, legacy)).toBe(false);
  });

  it("pads a weaker hash's verification with the scrypt work it lacks against a floor; the decoy is made like the floor", async () => {
    const pw = randomPassword();
    const floor = cheapHash(randomPassword(), 2 ** 16);
    const weak = cheapHash(pw, 2 ** 14);
    const work = async (run: () => Promise<unknown>) => {
      const before = passwordWorkDone();
      await run();
      return passwordWorkDone() - before;
    };
    expect(await work(() => verifyPassword(pw, weak, floor))).toBe(2 ** 16 * 8);
    expect(await work(() => verifyPassword(randomPassword(), weak, floor))).toBe(2 ** 16 * 8);
    expect(await work(async () => verifyPassword(pw, await decoyHash(floor), floor))).toBe(2 ** 16 * 8);
    expect(await work(() => verifyPassword(pw, weak))).toBe(2 ** 14 * 8);
    // A password that normalising changes is tried twice, on the decoy too: the pad covers both runs.
    const accented = `cafe\u0301-${pw}`;
    expect(await work(() => verifyPassword(accented, weak, floor))).toBe(2 * 2 ** 16 * 8);
    expect(await work(async () => verifyPassword(accented, await decoyHash(floor), floor))).toBe(2 * 2 ** 16 * 8);
    expect(await verifyPassword(pw, weak, floor)).toBe(true);
    expect(await verifyPassword(`${pw}x`, weak, floor)).toBe(false);
    expect(strongestHash([weak, floor, 'not a hash'])).toBe(floor);
    expect(strongestHash([])).toBeNull();
  });

  it('salts every hash', () => {
    const pw = randomPassword();
    expect(cheapHash(pw)).not.toBe(cheapHash(pw));
  });

  it(
    'salts hashPassword output',
    async () => {
      expect(await hashPassword(password)).not.toBe(await hashed);
    },
    SCRYPT_TIMEOUT,
  );

  it('refuses passwords shorter than 8 characters', async () => {
    expect(await rejected(hashPassword('1234567'))).toBeInstanceOf(Error);
  });

  it('verifies a hash made with other valid parameters (they can be raised later)', async () => {
    const pw = randomPassword();
    expect(await verifyPassword(pw, cheapHash(pw))).toBe(true);
    expect(await verifyPassword(randomPassword(), cheapHash(pw))).toBe(false);
  });

  it(
    'provides a real decoy hash that no empty password matches',
    async () => {
      const decoy = await decoyHash();
      expect(isPasswordHash(decoy)).toBe(true);
      expect(await verifyPassword('', decoy)).toBe(false);
    },
    SCRYPT_TIMEOUT,
  );
});

describe('malformed hashes', () => {
  const pw = randomPassword();
  const good = cheapHash(pw);
  const [, n, r, p, salt, key] = good.split('$');

  it.each([
    ['empty', ''],
    ['plain text', pw],
    ['another algorithm', `bcrypt$${n}$${r}$${p}$${salt}$${key}`],
    ['missing key', `scrypt$${n}$${r}$${p}$${salt}$`],
    ['missing field', `scrypt$${n}$${r}$${salt}$${key}`],
    ['N not a power of two', `scrypt$20000$${r}$${p}$${salt}$${key}`],
    ['N too small', `scrypt$1024$${r}$${p}$${salt}$${key}`],
    ['N too large (memory exhaustion)', `scrypt$${2 ** 24}$${r}$${p}$${salt}$${key}`],
    ['r too large', `scrypt$${n}$64$${p}$${salt}$${key}`],
    ['p too large', `scrypt$${n}$${r}$64$${salt}$${key}`],
    ['standard base64 characters', `scrypt$${n}$${r}$${p}$${salt}+/$${key}=`],
    ['trailing newline', `${good}\n`],
    ['extra field', `${good}$x`],
    ['negative N', `scrypt$-16384$${r}$${p}$${salt}$${key}`],
    // A key cut to one character decodes to no bytes, which a 0-byte scrypt output matches for any password.
    ['key cut to one character', `scrypt$${n}$${r}$${p}$${salt}$${key!.slice(0, 1)}`],
    ['key cut to 2 bytes', `scrypt$${n}$${r}$${p}$${salt}$${key!.slice(0, 3)}`],
    ['salt cut to one character', `scrypt$${n}$${r}$${p}$${salt!.slice(0, 1)}$${key}`],
    ['r of 0', `scrypt$${n}$0$${p}$${salt}$${key}`],
    ['p of 0', `scrypt$${n}$${r}$0$${salt}$${key}`],
    // 128·N·r = 4 GiB per attempt, and 16× the default work: each sign-in would take the machine's memory.
    ['N, r and p at their old limits (4 GiB)', `scrypt$${2 ** 20}$32$16$${salt}$${key}`],
  ])('%s → false', async (_label, hash) => {
    expect(isPasswordHash(hash)).toBe(false);
    expect(await verifyPassword(pw, hash)).toBe(false);
  });

  it('a modified key → false', async () => {
    const flipped = key!.startsWith('A') ? `B${key!.slice(1)}` : `A${key!.slice(1)}`;
    expect(await verifyPassword(pw, `scrypt$${n}$${r}$${p}$${salt}$${flipped}`)).toBe(false);
  });

  it('a modified salt → false', async () => {
    const flipped = salt!.startsWith('A') ? `B${salt!.slice(1)}` : `A${salt!.slice(1)}`;
    expect(await verifyPassword(pw, `scrypt$${n}$${r}$${p}$${flipped}$${key}`)).toBe(false);
  });
});
