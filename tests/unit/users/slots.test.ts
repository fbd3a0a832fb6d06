import { describe, expect, it } from 'vitest';
import { KeywardError } from '../../../lib/core/errors';
import {
  PASSWORD_CONCURRENCY,
  PASSWORD_QUEUE,
  hashPassword,
  passwordLoad,
  verifyPassword,
  withPasswordSlot,
} from '../../../lib/core/users/password';
import { Slots } from '../../../lib/core/users/slots';

/** A promise and the function that settles it, to hold a slot for exactly as long as a test wants. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

describe('Slots (bounded semaphore)', () => {
  it('admits `concurrency` holders, queues up to `maxWaiting`, refuses the next at once', async () => {
    const slots = new Slots(2, 1);
    const a = await slots.acquire();
    const b = await slots.acquire();
    expect(a && b).toBeTruthy();
    let cGot = false;
    const c = slots.acquire().then((release) => ((cGot = true), release));
    await Promise.resolve();
    expect(cGot).toBe(false);
    expect(slots.load).toEqual({ active: 2, waiting: 1 });
    expect(await slots.acquire()).toBeNull();
    a!();
    const cRelease = await c;
    expect(cGot).toBe(true);
    expect(slots.load).toEqual({ active: 2, waiting: 0 });
    // Releasing twice frees one slot only.
    a!();
    expect(slots.load).toEqual({ active: 2, waiting: 0 });
    b!();
    cRelease!();
    expect(slots.load).toEqual({ active: 0, waiting: 0 });
  });

  it('a waiter whose signal aborts leaves the queue and rejects; the others keep their place', async () => {
    const slots = new Slots(1, 2);
    const held = await slots.acquire();
    const controller = new AbortController();
    const leaving = slots.acquire(controller.signal);
    const staying = slots.acquire();
    expect(slots.load.waiting).toBe(2);
    controller.abort(new Error('client gone'));
    await expect(leaving).rejects.toThrow('client gone');
    expect(slots.load.waiting).toBe(1);
    held!();
    const next = await staying;
    expect(slots.load).toEqual({ active: 1, waiting: 0 });
    next!();
    expect(slots.load).toEqual({ active: 0, waiting: 0 });
  });
});

describe('password slots (issue 11, finding 3)', () => {
  it(`at most ${PASSWORD_CONCURRENCY} run and ${PASSWORD_QUEUE} wait; the next is refused with sign_in_busy (503, Retry-After)`, async () => {
    const hold = gate();
    let running = 0;
    let maxRunning = 0;
    const work = () =>
      withPasswordSlot(async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        await hold.promise;
        running--;
      });
    const admitted = Array.from({ length: PASSWORD_CONCURRENCY + PASSWORD_QUEUE }, work);
    await Promise.resolve();
    expect(passwordLoad()).toEqual({ active: PASSWORD_CONCURRENCY, waiting: PASSWORD_QUEUE });

    const refused = await work().catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(KeywardError);
    expect((refused as KeywardError).code).toBe('sign_in_busy');
    expect((refused as KeywardError).status).toBe(503);
    expect((refused as KeywardError).headers['retry-after']).toMatch(/^[1-9]\d*$/);

    // A real password check waits for a slot too: it cannot start scrypt while the bound is full.
    hold.open();
    await Promise.all(admitted);
    expect(maxRunning).toBe(PASSWORD_CONCURRENCY);
    expect(passwordLoad()).toEqual({ active: 0, waiting: 0 });
  });

  it('password work nested inside a held slot does not wait on itself', async () => {
    const result = await withPasswordSlot(() => withPasswordSlot(async () => 'inner'));
    expect(result).toBe('inner');
    expect(passwordLoad()).toEqual({ active: 0, waiting: 0 });
  });

  it('verifyPassword takes a slot: with every slot and queue place taken it is refused, not run', async () => {
    const hold = gate();
    const admitted = Array.from({ length: PASSWORD_CONCURRENCY + PASSWORD_QUEUE }, () => withPasswordSlot(() => hold.promise));
    await Promise.resolve();
    const stored = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';
    await expect(verifyPassword('whatever-password', stored)).rejects.toMatchObject({ code: 'sign_in_busy' });
    hold.open();
    await Promise.all(admitted);
  });

  it("hashPassword (never a client's doing) waits its turn past a full queue instead of failing, still two at a time", async () => {
    const hold = gate();
    const admitted = Array.from({ length: PASSWORD_CONCURRENCY + PASSWORD_QUEUE }, () => withPasswordSlot(() => hold.promise));
    await Promise.resolve();
    const hashing = hashPassword('a-new-password');
    await Promise.resolve();
    expect(passwordLoad().waiting).toBe(PASSWORD_QUEUE + 1);
    hold.open();
    await Promise.all(admitted);
    expect(await hashing).toMatch(/^scrypt\$/);
    expect(passwordLoad()).toEqual({ active: 0, waiting: 0 });
  });
});
