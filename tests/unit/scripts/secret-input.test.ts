import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { readTypedSecret, type TerminalInput } from '../../../scripts/secret-input';

/** A terminal's input as the CLI sees it: raw mode switched by the reader, keystrokes arriving as typed. */
class FakeTerminal extends EventEmitter implements TerminalInput {
  raw = false;
  setRawMode(raw: boolean) {
    this.raw = raw;
  }
  resume() {}
  pause() {}
  setEncoding() {}
  /** Types `text` once the reader is listening (in raw mode), one keystroke at a time. */
  async type(text: string) {
    while (!this.raw) await new Promise((resolve) => setImmediate(resolve));
    for (const char of text) this.emit('data', char);
  }
}

function terminal() {
  const input = new FakeTerminal();
  const output = new PassThrough();
  let shown = '';
  output.on('data', (chunk: Buffer) => (shown += chunk.toString('utf8')));
  return { input, output, shown: () => shown };
}

describe('a secret typed at a terminal (hash-password, keys add)', () => {
  it('is never shown, ends with Enter, takes Backspace, and is asked twice to confirm', async () => {
    const { input, output, shown } = terminal();
    const reading = readTypedSecret(input, output, 'Password', true);
    await input.type('correct horse battery staplx\u007fe\r');
    await new Promise((resolve) => setImmediate(resolve));
    await input.type('correct horse battery staple\r');
    expect(await reading).toBe('correct horse battery staple');
    expect(shown()).toBe('Password (not shown; Enter to finish): \nPassword again: \n');
    expect(input.raw).toBe(false);
  });

  it('skips arrow and function keys, erases whole characters, and takes pasted lines for the prompts that follow', async () => {
    const { input, output, shown } = terminal();
    const reading = readTypedSecret(input, output, 'Password', true);
    // ← and → (ESC [ D, ESC [ C), F1 (ESC O P), a Delete key (ESC [ 3 ~), an emoji erased with one Backspace.
    await input.type('pass\u001b[D\u001b[Cword\u001bOP\u001b[3~ 1🔑\u007f2\rpassword 12\r');
    expect(await reading).toBe('password 12');
    expect(shown()).toBe('Password (not shown; Enter to finish): \nPassword again: \n');
  });

  it('two entries that differ, or Ctrl-C, give nothing', async () => {
    const mismatch = terminal();
    const reading = readTypedSecret(mismatch.input, mismatch.output, 'Password', true);
    await mismatch.input.type('one-password\r');
    await new Promise((resolve) => setImmediate(resolve));
    await mismatch.input.type('another-password\r');
    expect(await reading).toBeNull();
    expect(mismatch.shown()).toContain('the two entries differ; nothing was done');
    expect(mismatch.shown()).not.toContain('password');

    const aborted = terminal();
    const key = readTypedSecret(aborted.input, aborted.output, 'New key', false);
    await aborted.input.type('sk-partial\u0003');
    expect(await key).toBeNull();
    expect(aborted.input.raw).toBe(false);
  });
});
