import { describe, expect, it } from 'vitest';
import { drainThenCut, ServingCalls } from '../../../lib/core/shutdown';

/** The calls a stop waits for, then cuts (lib/core/shutdown.ts): what is cut, and when the stop goes on. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((settle) => (resolve = settle));
  return { promise, resolve };
}

describe('ServingCalls and drainThenCut', () => {
  it('calls that end within the drain are not cut; the rest are, and the stop goes on once each has ended', async () => {
    const serving = new ServingCalls();
    const ending = deferred();
    const open = deferred();
    const cut: string[] = [];
    serving.track(ending.promise, () => cut.push('ending'));
    serving.track(open.promise, () => {
      cut.push('open');
      open.resolve(); // cut: its record is made, the call ends
    });
    ending.resolve();
    await drainThenCut(serving, () => serving.cutAll(), 50);
    expect(cut).toEqual(['open']);
  });

  it('no call: the stop goes on at once, without waiting for the drain', async () => {
    const serving = new ServingCalls();
    let cuts = 0;
    await drainThenCut(serving, () => cuts++, 3_600_000);
    expect(cuts).toBe(1);
  });

  it('a call that starts once the calls were cut is cut at once', () => {
    const serving = new ServingCalls();
    serving.cutAll();
    let cut = false;
    serving.track(new Promise(() => {}), () => (cut = true));
    expect(cut).toBe(true);
  });
});
