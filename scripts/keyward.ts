/**
 * `npm run keyward -- <command>`: Keyward's command line.
 *   hash-password                 read a password on stdin, print a hash for KEYWARD_USERS_FILE
 *   check-config                  validate the environment and upstreams like start-up does (exit 1 naming the field)
 *   schema                        print the JSON Schema of the KEYWARD_CONFIG file
 *   keys list                     versions of every service key (fingerprints, states, expiry warnings)
 *   keys add <upstream>           add a managed version (key on stdin), not yet serving
 *   keys rotate <upstream> [--id <rotation id>] [--skip-canary]   add (key on stdin), canary, switch
 *   keys rollback <rotation id>   undo a switch
 *   keys revoke <fingerprint>     stop every instance using that version on its next request
 *   audit tail [-n <count>] [--follow]                          the latest audit records as JSON Lines
 *   audit export [--since <ISO>] [--until <ISO>] [--type call|admin] [--upstream <id>]   JSONL, oldest first
 * Keys and audit commands work on the store the environment names (REDIS_URL or the SQLite file); in
 * development (no AUTH_SECRET, NODE_ENV not production) they use the secrets `npm run dev` generated.
 */
import { userInfo } from 'node:os';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { KeywardError } from '../lib/core/errors';
import { ConfigError } from '../lib/core/config/load';
import { keywardConfigSchema } from '../lib/core/config/schema';
import { auditFilter } from '../lib/core/api/admin';
import { keyAdmin } from '../lib/core/keys/admin';
import { createRuntime, type Runtime } from '../lib/core/runtime';
import { hashPassword } from '../lib/core/users/password';
import { prepareDevEnvironment } from './dev-setup';

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function main(command: string | undefined): Promise<number> {
  switch (command) {
    case 'hash-password': {
      if (process.stdin.isTTY) process.stderr.write('Password (then Enter and Ctrl-D): ');
      // Only the final line break is removed: a password may contain spaces.
      const password = (await readStdin()).replace(/\r?\n$/, '');
      if (password.length < 8) {
        process.stderr.write('keyward: passwords must be at least 8 characters\n');
        return 1;
      }
      process.stdout.write(`${await hashPassword(password)}\n`);
      return 0;
    }
    case 'check-config': {
      const { upstreams } = await import('../upstreams/index');
      const runtime = createRuntime({ env: process.env, upstreams });
      process.stdout.write(`keyward: configuration is valid (${runtime.registry.size} upstream(s): ${[...runtime.registry.keys()].join(', ') || 'none'})\n`);
      return 0;
    }
    case 'schema': {
      const schema = z.toJSONSchema(keywardConfigSchema, { io: 'input', unrepresentable: 'any' });
      process.stdout.write(`${JSON.stringify({ ...schema, title: 'Keyward configuration (KEYWARD_CONFIG)' }, null, 2)}\n`);
      return 0;
    }
    case 'keys':
      return keysCommand(process.argv[3], process.argv.slice(4));
    case 'audit':
      return auditCommand(process.argv[3], process.argv.slice(4));
    default:
      process.stderr.write('usage: npm run keyward -- <hash-password | check-config | schema | keys … | audit …>\n');
      return 2;
  }
}

async function openRuntime(): Promise<Runtime> {
  const env = process.env.AUTH_SECRET || process.env.NODE_ENV === 'production' ? process.env : await prepareDevEnvironment(process.cwd(), process.env);
  const { upstreams } = await import('../upstreams/index');
  return createRuntime({ env, upstreams });
}

const print = (value: unknown) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);

async function readKey(): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write('New key (then Enter and Ctrl-D; it is not shown again): ');
  return (await readStdin()).replace(/\r?\n$/, '');
}

const KEYS_USAGE = 'usage: npm run keyward -- keys <list | add <upstream> | rotate <upstream> [--id <id>] [--skip-canary] | rollback <rotation id> | revoke <fingerprint>>\n';
const AUDIT_USAGE = 'usage: npm run keyward -- audit <tail [-n <count>] [--follow] | export [--since <ISO>] [--until <ISO>] [--type call|admin] [--upstream <id>]>\n';

/** Options as parseArgs reads them, or null (after printing why and the usage) when they are not valid. */
function options<T>(parse: () => T, usage: string): T | null {
  try {
    return parse();
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code;
    if (typeof code !== 'string' || !code.startsWith('ERR_PARSE_ARGS_')) throw error;
    // parseArgs names the option, never its value.
    process.stderr.write(`keyward: ${(error as Error).message}\n${usage}`);
    return null;
  }
}

async function keysCommand(action: string | undefined, args: string[]): Promise<number> {
  const parsed = options(
    () => parseArgs({ args, allowPositionals: true, options: { id: { type: 'string' }, 'skip-canary': { type: 'boolean' } } }),
    KEYS_USAGE,
  );
  if (!parsed) return 2;
  const { values, positionals } = parsed;
  const runtime = await openRuntime();
  const keys = keyAdmin(runtime.keyRings, runtime.audit, `cli:${userInfo().username}`);
  const target = positionals[0];
  switch (action) {
    case 'list': {
      for (const ring of await runtime.keyRings.list()) {
        process.stdout.write(`${ring.upstream}\n`);
        for (const v of ring.versions) {
          const expires = v.expiresAt === null ? 'no expiry' : `expires ${new Date(v.expiresAt).toISOString()}`;
          process.stdout.write(`  ${v.fingerprint}  ${v.status.padEnd(8)} ${v.id.padEnd(32)} ${expires}${v.warning ? `  ⚠ ${v.warning}` : ''}\n`);
        }
      }
      return 0;
    }
    case 'add': {
      if (!target) break;
      const version = await keys.add(target, await readKey());
      print({ upstream: target, version });
      return 0;
    }
    case 'rotate': {
      if (!target) break;
      const rotation = await keys.rotate(target, await readKey(), { rotationId: values.id, skipCanary: values['skip-canary'] });
      print({ rotation });
      return rotation.state === 'canary_failed' ? 1 : 0;
    }
    case 'rollback': {
      if (!target) break;
      const rotation = await keys.rollback(target);
      print({ rotation });
      return 0;
    }
    case 'revoke': {
      if (!target) break;
      const revoked = await keys.revoke(target);
      print({ fingerprint: target, revoked });
      return 0;
    }
  }
  process.stderr.write(KEYS_USAGE);
  return 2;
}

async function auditCommand(action: string | undefined, args: string[]): Promise<number> {
  const parsed = options(
    () =>
      parseArgs({
        args,
        options: {
          n: { type: 'string', short: 'n', default: '20' },
          follow: { type: 'boolean', short: 'f' },
          since: { type: 'string' },
          until: { type: 'string' },
          type: { type: 'string' },
          upstream: { type: 'string' },
        },
      }),
    AUDIT_USAGE,
  );
  if (!parsed) return 2;
  const { values } = parsed;
  const runtime = await openRuntime();
  const line = (record: unknown) => process.stdout.write(`${JSON.stringify(record)}\n`);
  if (action === 'tail') {
    const count = Number(values.n);
    if (!Number.isInteger(count) || count < 1 || count > 10_000) throw new KeywardError('bad_request', { message: '-n is 1 to 10000.' });
    const latest = await runtime.audit.query({}, { limit: count, order: 'desc' });
    const records = latest.records.reverse();
    records.forEach(line);
    if (!values.follow) return 0;
    let cursor = records.at(-1)?.id;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const page = await runtime.audit.query({}, { limit: 1000, order: 'asc', cursor });
      page.records.forEach(line);
      cursor = page.records.at(-1)?.id ?? cursor;
    }
  }
  if (action === 'export') {
    const params = new URLSearchParams();
    for (const name of ['since', 'until', 'type', 'upstream'] as const) if (values[name]) params.set(name, values[name]);
    const filter = auditFilter(params);
    let cursor: string | undefined;
    for (;;) {
      const page = await runtime.audit.query(filter, { limit: 1000, order: 'asc', cursor });
      page.records.forEach(line);
      if (page.cursor === null) return 0;
      cursor = page.cursor;
    }
  }
  process.stderr.write(AUDIT_USAGE);
  return 2;
}

main(process.argv[2]).then(
  (code) => process.exit(code),
  (error: unknown) => {
    const message = error instanceof ConfigError || error instanceof KeywardError ? error.message : 'unexpected error';
    process.stderr.write(`keyward: ${message}\n`);
    process.exit(1);
  },
);
