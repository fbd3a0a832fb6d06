/**
 * `npm run keyward -- <command>`: Keyward's command line.
 *   hash-password   read a password on stdin, print a hash for KEYWARD_USERS_FILE
 *   check-config    validate the environment and upstreams like start-up does (exit 1 naming the field)
 *   schema          print the JSON Schema of the KEYWARD_CONFIG file
 */
import { z } from 'zod';
import { ConfigError } from '../lib/core/config/load';
import { keywardConfigSchema } from '../lib/core/config/schema';
import { createRuntime } from '../lib/core/runtime';
import { hashPassword } from '../lib/core/users/password';

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
    default:
      process.stderr.write('usage: npm run keyward -- <hash-password | check-config | schema>\n');
      return 2;
  }
}

main(process.argv[2]).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(error instanceof ConfigError ? `keyward: ${error.message}\n` : 'keyward: unexpected error\n');
    process.exit(1);
  },
);
