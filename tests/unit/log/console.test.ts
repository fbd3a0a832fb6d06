import { Console } from 'node:console';
import { Writable } from 'node:stream';
import { format, inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { scrubConsole } from '../../../lib/core/log/console';
import { logScrubber } from '../../../lib/core/log/logger';
import { randomSecret } from '../../fixtures/secrets';

/** A console whose `log` keeps what it is given, scrubbed by scrubConsole, and a secret the scrubber knows. */
function scrubbedLog(): { key: string; printed: unknown[][]; target: Console } {
  const key = randomSecret('cc');
  logScrubber.add([key]);
  const printed: unknown[][] = [];
  const target = { log: (...args: unknown[]) => printed.push(args) } as unknown as Console;
  for (const name of ['info', 'warn', 'error', 'debug', 'trace'] as const) (target as unknown as Record<string, unknown>)[name] = () => {};
  scrubConsole(target);
  return { key, printed, target };
}

describe('console output passes the log scrubber (scrubConsole)', () => {
  it("scrubs every form of a secret Keyward holds from what others print, and leaves other lines' arguments as given", () => {
    const key = randomSecret('console-key');
    logScrubber.add([key]);
    const printed: unknown[][] = [];
    const target = Object.fromEntries(
      ['log', 'info', 'warn', 'error', 'debug', 'trace'].map((name) => [name, (...args: unknown[]) => printed.push([name, ...args])]),
    ) as unknown as Console;
    scrubConsole(target);
    scrubConsole(target); // a second call wraps nothing twice
    // Next's line for an absolute-form target it cannot parse: the whole target, query and all.
    target.error(new TypeError('Invalid URL'), { input: `http://a:99999/api/proxy/echo/items/1?k=${key}` });
    target.warn('key %s and base64 %s', key, Buffer.from(key).toString('base64'));
    const error = new Error('plain');
    target.log('nothing secret', 42, error);
    expect(printed).toHaveLength(3);
    const [first, second, third] = printed;
    expect(first![0]).toBe('error');
    expect(String(first![1])).toContain('Invalid URL');
    expect(String(first![1])).toContain('[REDACTED]');
    expect(String(first![1])).not.toContain(key);
    expect(second).toEqual(['warn', 'key [REDACTED] and base64 [REDACTED]']);
    expect(third).toEqual(['log', 'nothing secret', 42, error]);
  });

  it('console.dir (with the options it is given) and console.dirxml pass the scrubber too', () => {
    const key = randomSecret('console-dir');
    logScrubber.add([key]);
    const printed: unknown[][] = [];
    const target = Object.fromEntries(
      ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dir', 'dirxml'].map((name) => [name, (...args: unknown[]) => printed.push([name, ...args])]),
    ) as unknown as Console;
    scrubConsole(target);
    target.dir({ upstreamBody: key });
    // console.dir does not call a custom inspect: what it would show is what is checked.
    target.dir({ upstreamBody: key, [inspect.custom]: () => 'nothing to see' });
    // Deeper than console.dir's default depth (2), shown with depth: null.
    target.dir({ a: { b: { c: { d: key } } } }, { depth: null });
    // Not shown at depth 0, so printed as given; a value without a secret too.
    const deep = { a: { b: { c: { d: key } } } };
    target.dir(deep, { depth: 0 });
    target.dir({ fine: true });
    target.dirxml('key', key);
    target.dirxml('nothing secret', 42);
    expect(printed).toEqual([
      ['log', "{ upstreamBody: '[REDACTED]' }"],
      ['log', expect.stringContaining("upstreamBody: '[REDACTED]'")],
      ['log', inspect({ a: { b: { c: { d: '[REDACTED]' } } } }, { depth: null })],
      ['dir', deep, { depth: 0 }],
      ['dir', { fine: true }, undefined],
      ['dirxml', 'key [REDACTED]'],
      ['dirxml', 'nothing secret', 42],
    ]);
  });

  it("with Node's own Console: dir and dirxml write scrubbed to its stdout, clean values as Node prints them", () => {
    const key = randomSecret('node-dir');
    logScrubber.add([key]);
    let out = '';
    const stdout = new Writable({
      write(chunk: Buffer, _encoding, done) {
        out += chunk.toString();
        done();
      },
    });
    const target = new Console({ stdout, colorMode: false });
    scrubConsole(target);
    target.dir({ upstreamBody: key });
    target.dirxml({ upstreamBody: key });
    target.dir('plain', { colors: false });
    expect(out).toBe("{ upstreamBody: '[REDACTED]' }\n{ upstreamBody: '[REDACTED]' }\n'plain'\n");
  });

  it('scrubs a secret as console quotes it inside an object: with all three quotes (\\\'), or a " and a backslash', () => {
    const { printed, target } = scrubbedLog();
    for (const key of [`${randomSecret('q')}'"\``, `${randomSecret('b')}"\\x`]) {
      logScrubber.add([key]);
      target.log({ upstreamBody: key });
      const text = format(...printed.at(-1)!);
      expect(text).toContain('[REDACTED]');
      expect(text).not.toContain(key.slice(0, 12));
    }
  });

  it('a secret where console would cut a long string or array short: its start is not printed either', () => {
    const { key, printed, target } = scrubbedLog();
    // util.inspect shows 10,000 characters of a string and 100 items of an array, then "… more".
    for (const at of [9_962, 9_990, 9_999]) target.log({ upstreamBody: 'x'.repeat(at) + key });
    target.log({ items: [...Array.from({ length: 100 }, (_, i) => i), key] });
    expect(printed).toHaveLength(4);
    for (const args of printed) {
      // As the console prints them: no start of the key (its prefix and 7 random characters, or more) is left.
      const text = format(...args);
      expect(text).not.toContain(key.slice(0, 10));
    }
  });

  it('a line too long to check whole (past the longest string V8 makes) is not printed: cut as console would cut it, it could show a start of a secret', () => {
    const { key, printed, target } = scrubbedLog();
    // Ten references to one 60-million-character string: 600 million characters whole, past V8's limit.
    const long = `${'x'.repeat(9_990)}${key}${'y'.repeat(60_000_000)}`;
    target.log({ parts: Array.from({ length: 10 }, () => long) });
    expect(printed).toHaveLength(1);
    const text = format(...printed[0]!);
    expect(text).not.toContain(key.slice(0, 10));
    expect(text).toContain('too long to check for secrets');
  });
});
