import { describe, expect, it } from 'vitest';
import { readServeOptions, UsageError } from '../../../lib/node/args';

describe('readServeOptions (what next start accepts)', () => {
  it('defaults: port 3000, every interface, Node\'s keep-alive', () => {
    expect(readServeOptions([], {})).toEqual({ port: 3000, hostname: undefined, keepAliveTimeout: undefined });
  });

  it('PORT and HOSTNAME, and flags winning over them', () => {
    expect(readServeOptions([], { PORT: '4000', HOSTNAME: '10.0.0.1' })).toEqual({ port: 4000, hostname: '10.0.0.1', keepAliveTimeout: undefined });
    expect(readServeOptions(['-p', '5000', '-H', '127.0.0.1'], { PORT: '4000', HOSTNAME: '10.0.0.1' })).toMatchObject({ port: 5000, hostname: '127.0.0.1' });
    expect(readServeOptions(['--port=6000', '--hostname', '::1', '--keepAliveTimeout', '65000'], {})).toEqual({ port: 6000, hostname: '::1', keepAliveTimeout: 65000 });
    expect(readServeOptions([], { HOSTNAME: '' }).hostname).toBeUndefined();
  });

  it('refuses what it does not understand, naming it', () => {
    for (const [args, env, named] of [
      [['--turbo'], {}, '--turbo'],
      [['next-app'], {}, 'next-app'],
      [['-p', '80a'], {}, '--port'],
      [['-p', '65536'], {}, '--port'],
      [[], { PORT: 'http' }, 'PORT'],
      [['--keepAliveTimeout', '-1'], {}, '--keepAliveTimeout'],
    ] as const) {
      expect(() => readServeOptions([...args], env), args.join(' ')).toThrow(UsageError);
      expect(() => readServeOptions([...args], env), args.join(' ')).toThrow(named);
    }
  });
});
