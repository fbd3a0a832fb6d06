import { describe, expect, it } from 'vitest';
import { createRuntime } from '../../../lib/core/runtime';
import type { DetectorInput } from '../../../lib/core/detect/config';
import { randomSecret, testSessionSecrets } from '../../fixtures/secrets';
import { writeConfigFile } from '../../fixtures/config';

/** The detector's settings: bad ones stop start-up with a message naming the field, never a secret's value. */
function start(detector: DetectorInput | undefined, env: Record<string, string> = {}) {
  return () => createRuntime({ env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', ...env }, detector, serving: false });
}

describe('detector settings', () => {
  it('defaults to the documented rules', () => {
    const runtime = start(undefined)();
    expect(runtime.detector).toBeDefined();
  });

  it.each([
    [{ calls: { factor: 0 } }, 'detector.calls.factor'],
    [{ throttle: { limit: 1.5 } }, 'detector.throttle.limit'],
    [{ unknownRule: true }, 'detector'],
    [{ webhook: { url: 'ftp://alerts.example.com/', secret: { env: 'W' } } }, 'detector.webhook.url'],
    [{ webhook: { url: 'https://user:pass@alerts.example.com/', secret: { env: 'W' } } }, 'detector.webhook.url'],
  ])('refuses %j naming %s', (input, field) => {
    expect(start(input as DetectorInput)).toThrow(field);
  });

  it('refuses an http webhook off loopback, and a missing or short signing secret, without echoing it', () => {
    const short = 'too-short-secret';
    expect(start({ webhook: { url: 'http://alerts.example.com/k', secret: { env: 'W' } } }, { W: randomSecret('w') })).toThrow(
      /detector\.webhook\.url: must be https/,
    );
    expect(start({ webhook: { url: 'https://alerts.example.com/k', secret: { env: 'W' } } })).toThrow(/detector\.webhook\.secret.*W/);
    let message = '';
    try {
      start({ webhook: { url: 'https://alerts.example.com/k', secret: { env: 'W' } } }, { W: short })();
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/at least 32 characters/);
    expect(message).not.toContain(short);
    expect(start({ webhook: { url: 'http://127.0.0.1:9/k', secret: { env: 'W' } } }, { W: randomSecret('w') })).not.toThrow();
  });

  it.each([
    ['a trailing newline', (s: string) => `${s}\n`],
    ['a leading space', (s: string) => ` ${s}`],
    ['an inner CR', (s: string) => `${s.slice(0, 16)}\r${s.slice(16)}`],
  ])('refuses a signing secret with %s, naming the field and not the value (as every other secret)', (_label, mangle) => {
    const value = randomSecret('w');
    let message = '';
    try {
      start({ webhook: { url: 'https://alerts.example.com/k', secret: { env: 'W' } } }, { W: mangle(value) })();
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('detector.webhook.secret: environment variable W has surrounding whitespace or control characters');
    expect(message).not.toContain(value.slice(0, 16));
    expect(message).not.toContain(value.slice(16));
  });

  it('takes the rules from one place only', () => {
    const config = writeConfigFile({ upstreams: {}, detector: { calls: { minPerMinute: 100 } } });
    expect(start(undefined, { KEYWARD_CONFIG: config })).not.toThrow();
    expect(start({ enabled: false }, { KEYWARD_CONFIG: config })).toThrow(/detector: set it in one place/);
  });
});
