import { describe, expect, it } from 'vitest';
import { parseArgs } from 'node:util';
import { argsProblem, operator, readServeOptions, UsageError } from '../../../lib/node/args';

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
      [['next-app'], {}, 'Unexpected argument'],
      [['-p', '80a'], {}, '--port'],
      [['-p', '65536'], {}, '--port'],
      [[], { PORT: 'http' }, 'PORT'],
      [['--keepAliveTimeout', '-1'], {}, '--keepAliveTimeout'],
    ] as const) {
      expect(() => readServeOptions([...args], env), args.join(' ')).toThrow(UsageError);
      expect(() => readServeOptions([...args], env), args.join(' ')).toThrow(named);
    }
  });

  it('never prints an argument that may be a key pasted in the wrong place (the CLI reads its errors the same way)', () => {
    const key = 'sk-live-4f9Qx2LmZp8RtV7nKc3WbJ6yHd1Ge5Sa';
    for (const args of [[key], ['--port', '3000', key], [`--${key}`], [`--${key}=1`], ['--', key]]) {
      let message = '';
      try {
        readServeOptions(args, {});
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message, args.join(' ')).not.toBe('');
      expect(message, args.join(' ')).not.toContain('4f9Qx2');
    }
    // Nor a value given to --port, PORT or --keepAliveTimeout: a key pasted there is named by its option only.
    for (const [args, env, named] of [
      [['--port', key], {}, '--port'],
      [['-p', `${key.slice(0, 8)}`], {}, '--port'],
      [[], { PORT: key }, 'PORT'],
      [['--keepAliveTimeout', key], {}, '--keepAliveTimeout'],
      [['-p', '4242424242'], {}, '--port'],
    ] as const) {
      let message = '';
      try {
        readServeOptions([...args], env);
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message, named).toContain(named);
      expect(message, named).not.toContain(key.slice(0, 8));
      expect(message, named).not.toContain('4242424242');
    }
    // A short positional argument is not shown either (no option is named so, and it could be a short key).
    expect(() => readServeOptions(['q8Zr2Kd9'], {})).toThrow('Unexpected argument (not shown)');
    expect(() => readServeOptions(['q8Zr2Kd9'], {})).not.toThrow('q8Zr2Kd9');
    // A short option name is still named, and an error of another kind is not parseArgs's.
    expect(() => readServeOptions(['--turbo'], {})).toThrow("Unknown option '--turbo'");
    let caught: unknown;
    try {
      parseArgs({ args: ['--json=1'], options: { json: { type: 'boolean' } } });
    } catch (error) {
      caught = error;
    }
    expect(argsProblem(caught)).toBe("Option '--json' does not take an argument");
    expect(argsProblem(new Error('other'))).toBeNull();
  });
});

describe('operator (who ran a CLI command, for the audit trail)', () => {
  it('is the OS user, or $USER or the numeric id where the user id has no passwd entry (os.userInfo throws)', () => {
    expect(operator(() => ({ username: 'ada' }), {})).toBe('ada');
    const noEntry = () => {
      throw Object.assign(new Error('uv_os_get_passwd returned ENOENT'), { code: 'ERR_SYSTEM_ERROR' });
    };
    expect(operator(noEntry, { USER: 'builder' })).toBe('builder');
    expect(operator(noEntry, {})).toBe(`uid ${process.getuid?.() ?? 'unknown'}`);
  });
});
