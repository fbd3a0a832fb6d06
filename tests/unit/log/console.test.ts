import { describe, expect, it } from 'vitest';
import { scrubConsole } from '../../../lib/core/log/console';
import { logScrubber } from '../../../lib/core/log/logger';
import { randomSecret } from '../../fixtures/secrets';

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
});
