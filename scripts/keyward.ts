/**
 * `npm run keyward -- <command>`: Keyward's command line (`npm run keyward -- --help` lists the commands).
 * Keys and audit commands print tables and sentences for people, and with `--json` the JSON scripts read
 * (the admin API's shapes; JSON Lines for audit records). No key value is ever printed: keys are named by
 * fingerprint.
 *
 * Settings come from the environment and, like `next dev`/`next start`, from the `.env*` files of the current
 * directory (npm runs scripts in the project's root), loaded by Next's own loader: NODE_ENV=production reads the
 * production files, NODE_ENV=test the test files, anything else the development files; a variable already set
 * in the environment wins. Keys and audit commands work on the store the settings name (REDIS_URL or the
 * SQLite file); in development (no AUTH_SECRET, NODE_ENV not production) they use the secrets `npm run dev`
 * generated.
 */
import { writeFileSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import nextEnv from '@next/env';
import type { AdminRecord, AuditFilter, AuditRecord, CallRecord } from '../lib/core/audit/audit';
import { KeywardError, systemErrorDetail } from '../lib/core/errors';
import { ConfigError, readConfigFile, readConfigJson } from '../lib/core/config/load';
import { configJsonSchema } from '../lib/core/presets';
import { auditFilter } from '../lib/core/api/admin';
import { undoAlert } from '../lib/core/api/alerts';
import type { Alert } from '../lib/core/detect/alerts';
import { keyAdmin } from '../lib/core/keys/admin';
import { NEVER_SENT, type KeyVersion, type Rotation, type RotationResult, type VersionView } from '../lib/core/keys/rings';
import { createLogger } from '../lib/core/log/logger';
import { utc } from '../lib/core/time';
import { createRuntime, type Runtime } from '../lib/core/runtime';
import { checkRoutes } from '../lib/core/upstream/registry';
import { argsProblem, operator } from '../lib/node/args';
import { fastLaneProblems } from '../lib/node/runtime';
import { hashPassword, MAX_PASSWORD_LENGTH } from '../lib/core/users/password';
import { appendDecoy, readDecoysFile } from '../lib/core/detect/decoys';
import { DECOY_SHAPES, decoyId, mintDecoy, type DecoyShape } from '../lib/core/detect/mint';
import { renderClientTypes } from './client-types';
import { prepareDevEnvironment } from './dev-setup';
import { importCommand } from './import-openapi';
import { printable, printableJson } from './printable';
import { readTypedSecret } from './secret-input';

/** The commands, one line each, for `--help` (`help keys` and `keys --help` show the keys lines only). */
const COMMANDS: ReadonlyArray<readonly [usage: string, what: string]> = [
  ['hash-password', 'read a password on stdin, print its hash for KEYWARD_USERS_FILE'],
  ['check-config', 'check the environment and upstreams as start-up does (exit 1 naming the field)'],
  ['schema', 'print the JSON Schema of the KEYWARD_CONFIG file'],
  ['types', "write the typed client's KeywardApi (.d.ts) for the JSON config's upstreams"],
  ['import <spec>', 'add an upstream (--upstream <id>) from an OpenAPI 3.0/3.1 document, asking which operations to expose'],
  ['keys list', "every service key's versions (fingerprint, status, expiry) and recent rotations"],
  ['keys add <upstream>', 'add a key version (key on stdin); it serves once a rotation switches to it'],
  ['keys rotate <upstream>', 'add a key (on stdin), send the canary call with it, switch if it passes'],
  ['keys rollback <rotation id>', 'undo a switch: the keys it replaced serve again (--upstream <id> when several have that rotation id)'],
  ['keys revoke <fingerprint>', 'every instance stops using that key version on its next request'],
  ['alerts list', "the anomaly detector's alerts, newest first (id, time, rule, step, user, upstream, state)"],
  ['alerts undo <alert id>', 'lift what the alert\'s step set, as an admin\'s undo does; also an alert about an admin'],
  ['audit tail', 'the latest audit records, oldest first'],
  ['audit export', 'audit records as JSON Lines, oldest first (for files and other tools)'],
  ['decoys create --shape <shape>', `mint a decoy key (honeytoken) to plant; shapes: ${DECOY_SHAPES.join(', ')}`],
  ['decoys list', 'the decoys Keyward watches for (id, shape, note; never the values)'],
  ['help [keys|alerts|audit|decoys]', 'this list'],
];

/** Options: which commands take them (for `help keys`/`help audit`), how, and what they do. */
const OPTIONS: ReadonlyArray<readonly [groups: string, usage: string, what: string]> = [
  ['keys alerts audit', '--json', 'keys, alerts, audit tail: JSON for scripts (the admin API\'s shapes; JSON Lines) instead of tables'],
  ['keys', '--id <rotation id>', 'keys rotate: your own id (default rot-<fingerprint>); repeating a rotation changes nothing'],
  ['keys', '--skip-canary', 'keys rotate: switch without the canary call'],
  ['keys', '--upstream <id>', "keys rollback: that upstream's rotation (needed when more than one has a rotation with this id)"],
  ['alerts', '--limit <count>', 'alerts list: how many, newest first (default 20, at most 200)'],
  ['audit', '-n <count>', 'audit tail: how many records (default 20, at most 10000)'],
  ['audit', '-f, --follow', 'audit tail: keep printing new records (Ctrl-C to stop)'],
  ['audit', '--since <ISO>, --until <ISO>', 'audit export: only records in this time range'],
  ['audit', '--type call|admin', 'audit export: only calls, or only admin actions'],
  ['audit', '--upstream <id>', "audit export: only this upstream's records"],
  ['decoys', '--note <text>', 'decoys create: where you plant it, for whoever reads the alert'],
  ['decoys', '--file <file>', 'decoys: the decoys file (default KEYWARD_DECOYS_FILE, else keyward.decoys.json)'],
  ['decoys', '--json', 'decoys create, list: JSON for scripts'],
  ['', '--out <file>', 'types: write to this file (default: print)'],
  ['', '--config <file>', 'types: read this JSON config instead of KEYWARD_CONFIG / KEYWARD_CONFIG_JSON'],
  ['', '--operations <list> | --all', 'import: expose these ("GET /pets,addPet"), or all; needed without a terminal'],
  ['', '--out <file>', 'import: the JSON config to add the upstream to (default config/keyward.json)'],
  ['', '--base-url <url>', "import: instead of the document's first server"],
  ['', '--auth <scheme>', 'import: the security scheme to attach, instead of the one most operations use'],
  ['', '--force', 'import: replace an upstream of the same id'],
  ['', '-h, --help', 'this list (also after a command)'],
];

const SETTINGS = `
Settings come from the environment, then from the .env files of the current directory, read as Next reads
them: NODE_ENV=production reads .env.production.local, .env.local, .env.production, .env; NODE_ENV=test
reads .env.test.local, .env.test, .env; any other (unset, development) reads .env.development.local,
.env.local, .env.development, .env. The environment wins over the files, an earlier file over a later one.
`;

/**
 * How this command line was started, as its usage lines name it: `npm run keyward --` from a checkout, or
 * `node <dist>/keyward-cli.mjs` where `npm run build` bundled it (an image with production dependencies only).
 */
const BUNDLE = process.argv[1] ?? '';
const INVOKED = /keyward-cli\.mjs$/.test(BUNDLE) ? `node ${relative(process.cwd(), BUNDLE) || BUNDLE}` : 'npm run keyward --';

const HELP_GROUPS = ['keys', 'alerts', 'audit', 'decoys'] as const;
type HelpGroup = (typeof HELP_GROUPS)[number];
const isHelpGroup = (word: string | undefined): word is HelpGroup => HELP_GROUPS.includes(word as HelpGroup);

function help(group?: HelpGroup): string {
  const commands = COMMANDS.filter(([usage]) => group === undefined || usage.startsWith(`${group} `));
  const options = OPTIONS.filter(([groups]) => group === undefined || groups.split(' ').includes(group));
  const width = Math.max(...commands.map(([usage]) => usage.length), ...options.map(([, usage]) => usage.length));
  const line = (usage: string, what: string) => `  ${usage.padEnd(width)}  ${what}`;
  return [
    `usage: ${INVOKED} ${group ?? '<command>'}${group ? ' <command>' : ''} [options]`,
    '',
    'commands:',
    ...commands.map(([usage, what]) => line(usage, what)),
    '',
    'options:',
    ...options.map(([, usage, what]) => line(usage, what)),
    group === undefined ? SETTINGS : '',
  ].join('\n');
}

const USAGE = `usage: ${INVOKED} <hash-password | check-config | schema | types | import … | keys … | alerts … | audit … | decoys … | help>\n`;
const TYPES_USAGE = `usage: ${INVOKED} types [--out <file>] [--config <file>]\n`;
const KEYS_USAGE = `usage: ${INVOKED} keys <list | add <upstream> | rotate <upstream> [--id <id>] [--skip-canary] | rollback <rotation id> [--upstream <upstream>] | revoke <fingerprint>> [--json]\n`;
const ALERTS_USAGE = `usage: ${INVOKED} alerts <list [--limit <count>] | undo <alert id>> [--json]\n`;
const AUDIT_USAGE = `usage: ${INVOKED} audit <tail [-n <count>] [--follow] [--json] | export [--since <ISO>] [--until <ISO>] [--type call|admin] [--upstream <id>]>\n`;
const DECOYS_USAGE = `usage: ${INVOKED} decoys <create --shape <${DECOY_SHAPES.join('|')}> [--note <text>] | list> [--file <file>] [--json]\n`;
const MORE = `Run \`${INVOKED} --help\` for every command.\n`;

/** The `.env*` files that were read, for the commands that use the settings to say so. */
let envFiles: string[] = [];

/**
 * Loads the `.env*` files exactly as `next dev` (development) and `next start` (production) do, with Next's
 * own loader. Next's loader logs only failures; they go to stderr, so stdout stays what the command prints.
 */
function loadEnvFiles(): void {
  const log = {
    info: () => {},
    error: (message: unknown, error?: unknown) => {
      // The file name and the error's code only: never the error itself, which could quote the file.
      const code = (error as { code?: unknown } | undefined)?.code;
      process.stderr.write(`keyward: ${String(message)}${typeof code === 'string' ? ` (${code})` : ''}\n`);
    },
  };
  const { loadedEnvFiles } = nextEnv.loadEnvConfig(process.cwd(), process.env.NODE_ENV !== 'production', log);
  envFiles = loadedEnvFiles.map((file) => file.path);
}

function reportEnvFiles(): void {
  if (envFiles.length > 0) process.stderr.write(`keyward: settings also from ${envFiles.join(', ')}\n`);
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A secret from stdin: typed at a terminal (hidden; asked twice when `confirm`), or piped. Null: aborted or mismatched. */
async function readSecret(what: string, confirm: boolean): Promise<string | null> {
  if (!process.stdin.isTTY) return (await readStdin()).replace(/\r?\n$/, '');
  return readTypedSecret(process.stdin, process.stderr, what, confirm);
}

async function main(args: readonly string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === 'help' || command === '--help' || command === '-h') {
    const group = isHelpGroup(rest[0]) ? rest[0] : undefined;
    if (command === 'help' && rest.length > (group ? 1 : 0)) return usageError(USAGE);
    process.stdout.write(help(group));
    return 0;
  }
  // `--help` after a command (before a `--` that ends the options).
  const flags = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (flags.includes('--help') || flags.includes('-h')) {
    process.stdout.write(help(isHelpGroup(command) ? command : undefined));
    return 0;
  }
  loadEnvFiles();
  switch (command) {
    case 'hash-password': {
      if (rest.length > 0) return usageError(USAGE);
      const password = await readSecret('Password', true);
      if (password === null) return 1;
      if (password.length < 8 || password.length > MAX_PASSWORD_LENGTH) {
        process.stderr.write(`keyward: passwords must be 8 to ${MAX_PASSWORD_LENGTH} characters (the sign-in form takes no longer one)\n`);
        return 1;
      }
      // A browser's password field cannot send a line break or another control character: such a hash would
      // never match what is typed (a piped file with an extra blank line, say).
      if (/[\x00-\x1f\x7f]/.test(password)) {
        process.stderr.write('keyward: the password holds a line break or another control character, which a sign-in form cannot send\n');
        return 1;
      }
      process.stdout.write(`${await hashPassword(password)}\n`);
      return 0;
    }
    case 'check-config': {
      if (rest.length > 0) return usageError(USAGE);
      // As the server would start: with the serving checks, and in development with `npm run dev`'s secrets.
      const production = process.env.NODE_ENV === 'production';
      const runtime = await openRuntime(true);
      const upstreams = `${runtime.registry.size} upstream(s): ${[...runtime.registry.keys()].join(', ') || 'none'}`;
      // npm start's own refusal on top (server.ts), so a configuration this calls valid starts there too.
      const refused = production ? fastLaneProblems(runtime) : [];
      if (refused.length > 0) {
        process.stderr.write(`keyward: npm start would refuse this configuration:\n${refused.join('\n')}\n`);
        return 1;
      }
      if (production) {
        process.stdout.write(`keyward: configuration is valid for production (NODE_ENV=production; ${upstreams})\n`);
      } else {
        // npm start sets NODE_ENV=production itself: a check without it is not the deployment's (secrets and a
        // sign-in method are generated for development, and production's checks are not run).
        process.stdout.write(`keyward: configuration is valid (${upstreams}), checked for development (npm run dev)\n`);
        process.stderr.write(`keyward: to check a deployment as npm start runs it: NODE_ENV=production ${INVOKED} check-config\n`);
      }
      return 0;
    }
    case 'schema': {
      if (rest.length > 0) return usageError(USAGE);
      process.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
      return 0;
    }
    case 'types':
      return typesCommand(rest);
    case 'import':
      return importCommand(rest, {
        cwd: process.cwd(),
        stdin: process.stdin,
        stdout: process.stdout,
        stderr: process.stderr,
        interactive: Boolean(process.stdin.isTTY && process.stderr.isTTY),
      });
    case 'keys':
      return keysCommand(rest[0], rest.slice(1));
    case 'alerts':
      return alertsCommand(rest[0], rest.slice(1));
    case 'audit':
      return auditCommand(rest[0], rest.slice(1));
    case 'decoys':
      return decoysCommand(rest[0], rest.slice(1));
    default:
      return usageError(USAGE);
  }
}

function usageError(usage: string): number {
  process.stderr.write(usage + MORE);
  return 2;
}

/** Where the open runtime's upstreams came from, in words, for a command naming an upstream it does not have. */
let upstreamSources = '';

/**
 * The upstreams this command line sees: the JSON config's and this checkout's upstreams/index.ts, never those an
 * app that installed the keyward package declares in its own TypeScript (keyward.ts), which only its server loads.
 */
function describeSources(env: NodeJS.ProcessEnv, typescript: readonly string[], all: readonly string[]): string {
  const list = (ids: readonly string[]) => (ids.length > 0 ? ids.join(', ') : 'none');
  const config = env.KEYWARD_CONFIG
    ? `KEYWARD_CONFIG (${resolve(env.KEYWARD_CONFIG)})`
    : env.KEYWARD_CONFIG_JSON
      ? 'KEYWARD_CONFIG_JSON'
      : 'KEYWARD_CONFIG / KEYWARD_CONFIG_JSON (neither is set)';
  const json = all.filter((id) => !typescript.includes(id));
  return [
    `this command line knows the upstreams of ${config}: ${list(json)}; and of this Keyward checkout's upstreams/index.ts: ${list(typescript)}.`,
    'The upstreams an app declares in its own TypeScript (its keyward.ts, with the keyward package) are not loaded here:',
    "manage their keys through the app's admin API (GET /api/admin/keys, POST /api/admin/keys/<upstream>/rotate …;",
    'README "Key lifecycle"), which runs in the app and sees every upstream it serves.',
  ].join('\n');
}

/** The runtime the CLI works on; `serving`: with the checks only a server needs (check-config). */
async function openRuntime(serving = false): Promise<Runtime> {
  reportEnvFiles();
  const env = process.env.AUTH_SECRET || process.env.NODE_ENV === 'production' ? process.env : await prepareDevEnvironment(process.cwd(), process.env);
  const { upstreams } = await import('../upstreams/index');
  const runtime = createRuntime({
    env,
    upstreams,
    serving,
    // Log lines (a key version refused as one of Keyward's own secrets, say) go to stderr: stdout is the command's
    // output, which scripts parse (--json).
    logger: createLogger({ destination: process.stderr }),
    warn: (message) => process.stderr.write(`keyward: warning: ${message}\n`),
  });
  upstreamSources = describeSources(env, upstreams.map(({ id }) => id), [...runtime.registry.keys()]);
  return runtime;
}

/**
 * `types`: the typed client's API for the JSON config (lib/client; TypeScript adapters are typed by inference).
 * Read with the loader the server uses, so presets are expanded and a bad file fails as start-up would. Without
 * KEYWARD_CONFIG, development reads config/demo.json as `npm run dev` does.
 */
async function typesCommand(args: string[]): Promise<number> {
  const parsed = options(() => parseArgs({ args, options: { out: { type: 'string' }, config: { type: 'string' } } }), TYPES_USAGE);
  if (!parsed) return 2;
  const { out, config } = parsed.values;
  reportEnvFiles();
  const json = config === undefined ? process.env.KEYWARD_CONFIG_JSON : undefined;
  let file = config ?? process.env.KEYWARD_CONFIG;
  if (file && json) throw new ConfigError('set either KEYWARD_CONFIG (a file) or KEYWARD_CONFIG_JSON (its content), not both');
  if (!file && !json) {
    if (process.env.NODE_ENV === 'production') {
      process.stderr.write('keyward: no JSON config to read: set KEYWARD_CONFIG or KEYWARD_CONFIG_JSON, or pass --config <file>\n');
      return 1;
    }
    file = 'config/demo.json';
    process.stderr.write(`keyward: KEYWARD_CONFIG is not set; reading ${file}, as \`npm run dev\` does\n`);
  }
  const definitions = file ? readConfigFile(file) : readConfigJson(json!);
  // What start-up compiles beyond the schema (a query parameter declared as an object, say), without its secrets.
  checkRoutes(definitions);
  // Named relative to the project when it is inside it, so the generated file is the same on every machine.
  const shown = file && !relative(process.cwd(), file).startsWith('..') ? relative(process.cwd(), file) : file;
  const text = renderClientTypes(definitions, shown ?? 'KEYWARD_CONFIG_JSON', (message) =>
    process.stderr.write(`keyward: warning: ${printable(message)}\n`),
  );
  if (out === undefined) {
    process.stdout.write(text);
  } else {
    writeFileSync(out, text);
    process.stderr.write(`keyward: wrote KeywardApi (${definitions.map((d) => d.id).join(', ') || 'no upstreams'}) to ${out}\n`);
  }
  return 0;
}

const printJson = (value: unknown) => process.stdout.write(`${printableJson(value, 2)}\n`);
const say = (sentence: string) => process.stdout.write(`${sentence}\n`);

/** The new key, from stdin; null when typing it was aborted (Ctrl-C, said already). */
function readKey(): Promise<string | null> {
  return readSecret('New key', false);
}

/** Options as parseArgs reads them, or null (after printing why and the usage) when they are not valid. */
function options<T>(parse: () => T, usage: string): T | null {
  try {
    return parse();
  } catch (error) {
    const problem = argsProblem(error);
    if (problem === null) throw error;
    process.stderr.write(`keyward: ${problem}\n`);
    usageError(usage);
    return null;
  }
}

async function keysCommand(action: string | undefined, args: string[]): Promise<number> {
  const parsed = options(
    () =>
      parseArgs({
        args,
        allowPositionals: true,
        options: { id: { type: 'string' }, 'skip-canary': { type: 'boolean' }, upstream: { type: 'string' }, json: { type: 'boolean' } },
      }),
    KEYS_USAGE,
  );
  if (!parsed) return 2;
  const { values, positionals } = parsed;
  const target = positionals[0];
  const known = action === 'list' || ((action === 'add' || action === 'rotate' || action === 'rollback' || action === 'revoke') && target);
  if (!known || (values.upstream !== undefined && action !== 'rollback')) return usageError(KEYS_USAGE);
  const json = values.json === true;
  const runtime = await openRuntime();
  const keys = keyAdmin(runtime.keyRings, runtime.audit, `cli:${operator()}`);
  switch (action) {
    case 'list': {
      const rings = await runtime.keyRings.list();
      if (json) printJson({ upstreams: rings });
      else printKeyList(rings);
      return 0;
    }
    case 'add': {
      const key = await readKey();
      if (key === null) return 1;
      const version = await keys.add(target!, key);
      if (json) printJson({ upstream: target, version });
      else say(addedSentence(target!, version));
      return 0;
    }
    case 'rotate': {
      const key = await readKey();
      if (key === null) return 1;
      const rotation = await keys.rotate(target!, key, { rotationId: values.id, skipCanary: values['skip-canary'] });
      if (json) printJson({ rotation });
      else if (rotation.state === 'canary_failed') process.stderr.write(`keyward: ${canaryFailedSentence(rotation)}\n`);
      else say(rotationSentence(rotation));
      return rotation.state === 'canary_failed' ? 1 : 0;
    }
    case 'rollback': {
      // Rotation ids are unique per upstream only: an id on several rings needs --upstream, never the first listed.
      const holders = values.upstream === undefined ? await runtime.keyRings.upstreamsWithRotation(target!) : [];
      if (holders.length > 1) {
        process.stderr.write(`keyward: rotation ${printable(target!)} is on more than one upstream (${holders.join(', ')}): name one with --upstream <upstream>.\n`);
        return 2;
      }
      const rotation = await keys.rollback(target!, values.upstream);
      if (json) printJson({ rotation });
      else say(`${rotation.upstream}: rotation ${rotation.id} is rolled back; key ${rotation.to} no longer serves, ${keysPhrase(rotation.from)} ${rotation.from.length === 1 ? 'serves' : 'serve'} again unless revoked or expired.`);
      return 0;
    }
    case 'revoke': {
      const revoked = await keys.revoke(target!);
      if (json) printJson({ fingerprint: target, revoked });
      else say(`revoked key ${target} (${revoked.map((r) => `${r.upstream}: ${r.version}`).join(', ')}); every instance stops using it on its next request.`);
      return 0;
    }
  }
  return usageError(KEYS_USAGE);
}

/**
 * `alerts list`: what the anomaly detector did, newest first (the admin API's list, first page). `alerts undo`: the
 * admin API's undo (lib/core/api/alerts.ts undoAlert), by the operator (`cli:<OS user>`, as the keys commands), who
 * may also undo an alert about an admin: the API refuses that admin their own alert, so with a single admin the
 * command line is how it is undone.
 */
async function alertsCommand(action: string | undefined, args: string[]): Promise<number> {
  const parsed = options(
    () => parseArgs({ args, allowPositionals: true, options: { limit: { type: 'string' }, json: { type: 'boolean' } } }),
    ALERTS_USAGE,
  );
  if (!parsed) return 2;
  const { values, positionals } = parsed;
  const known = (action === 'list' && positionals.length === 0) || (action === 'undo' && positionals.length === 1 && values.limit === undefined);
  if (!known) return usageError(ALERTS_USAGE);
  const limit = Number(values.limit ?? ALERTS_SHOWN);
  if (!/^\d+$/.test(values.limit ?? '1') || limit < 1 || limit > 200) {
    process.stderr.write('keyward: --limit is 1 to 200\n');
    return usageError(ALERTS_USAGE);
  }
  const runtime = await openRuntime();
  if (action === 'list') {
    const { alerts, cursor } = await runtime.alerts.list({ limit });
    if (values.json) printJson({ alerts });
    else if (alerts.length === 0) say('No alerts: the anomaly detector has not acted.');
    else printTable([ALERT_HEADER, ...alerts.map(alertRow)]);
    if (cursor !== null) process.stderr.write(`keyward: the newest ${plural(alerts.length, 'alert')}; older ones with a larger --limit, or on the Alerts page\n`);
    return 0;
  }
  const { alert, repeated } = await undoAlert(runtime, positionals[0]!, `cli:${operator()}`, { notBySubject: false });
  if (values.json) printJson({ alert });
  else say(undoSentence(alert, repeated));
  return 0;
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
          // Export always prints JSON Lines; --json is accepted there too, so scripts can pass it everywhere.
          json: { type: 'boolean' },
        },
      }),
    AUDIT_USAGE,
  );
  if (!parsed) return 2;
  const { values } = parsed;
  if (action !== 'tail' && action !== 'export') return usageError(AUDIT_USAGE);
  // export's filters are checked before the runtime opens: a bad one is a bad option value (exit 2, with the usage).
  let filter: AuditFilter = {};
  if (action === 'export') {
    const params = new URLSearchParams();
    for (const name of ['since', 'until', 'type', 'upstream'] as const) if (values[name]) params.set(name, values[name]);
    try {
      filter = auditFilter(params);
    } catch (error) {
      if (!(error instanceof KeywardError)) throw error;
      process.stderr.write(`keyward: audit export: ${error.message}\n`);
      return usageError(AUDIT_USAGE);
    }
  }
  const runtime = await openRuntime();
  const line = (record: unknown) => process.stdout.write(`${printableJson(record)}\n`);
  if (action === 'tail') {
    const count = Number(values.n);
    if (!Number.isInteger(count) || count < 1 || count > 10_000) {
      process.stderr.write('keyward: -n is 1 to 10000\n');
      return usageError(AUDIT_USAGE);
    }
    const latest = await runtime.audit.query({}, { limit: count, order: 'desc' });
    const records = latest.records.reverse();
    let print: (records: readonly AuditRecord[]) => void;
    if (values.json) {
      print = (batch) => batch.forEach(line);
    } else {
      const widths = columnWidths([AUDIT_HEADER, ...records.map(auditRow)], AUDIT_MIN_WIDTHS);
      if (records.length > 0 || values.follow) say(formatRow(AUDIT_HEADER, widths));
      else say('No audit records.');
      print = (batch) => batch.forEach((record) => say(formatRow(auditRow(record), widths)));
    }
    print(records);
    if (!values.follow) return 0;
    let cursor = records.at(-1)?.id;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const page = await runtime.audit.query({}, { limit: 1000, order: 'asc', cursor });
      print(page.records);
      cursor = page.records.at(-1)?.id ?? cursor;
    }
  }
  let cursor: string | undefined;
  for (;;) {
    const page = await runtime.audit.query(filter, { limit: 1000, order: 'asc', cursor });
    page.records.forEach(line);
    if (page.cursor === null) return 0;
    cursor = page.cursor;
  }
}

/** The decoys file the CLI writes: --file, else KEYWARD_DECOYS_FILE, else keyward.decoys.json (README "Decoy keys"). */
const DEFAULT_DECOYS_FILE = 'keyward.decoys.json';

/**
 * `decoys create`: mints a decoy shaped like a real key of a provider, adds it to the decoys file and prints its
 * value, once, on stdout (for aws, the access key id, then the secret access key), to be planted. The value is
 * also in the file: decoys are fake by construction, and the server must know them to recognise them.
 * `decoys list`: what the file holds, without the values.
 */
async function decoysCommand(action: string | undefined, args: string[]): Promise<number> {
  const parsed = options(
    () => parseArgs({ args, options: { shape: { type: 'string' }, note: { type: 'string' }, file: { type: 'string' }, json: { type: 'boolean' } } }),
    DECOYS_USAGE,
  );
  if (!parsed) return 2;
  const { values } = parsed;
  const fromEnv = process.env.KEYWARD_DECOYS_FILE;
  const file = values.file ?? fromEnv ?? DEFAULT_DECOYS_FILE;
  if (action === 'list') {
    const decoys = readDecoysFile(file, 'empty');
    if (values.json) printJson({ decoys: decoys.map(({ id, shape, note, createdAt }) => ({ id, shape, note: note ?? null, createdAt })) });
    else if (decoys.length === 0) say(`No decoys in ${file}.`);
    else printTable([['ID', 'SHAPE', 'CREATED (UTC)', 'NOTE'], ...decoys.map((d) => [d.id, d.shape, utc(Date.parse(d.createdAt)), d.note ?? ''])]);
    return 0;
  }
  if (action !== 'create') return usageError(DECOYS_USAGE);
  const shape = values.shape;
  if (!DECOY_SHAPES.includes(shape as DecoyShape)) {
    process.stderr.write(`keyward: --shape must be one of ${DECOY_SHAPES.join(', ')}\n`);
    return usageError(DECOYS_USAGE);
  }
  const minted = mintDecoy(shape as DecoyShape);
  const decoy = { id: decoyId(), ...minted, ...(values.note === undefined ? {} : { note: values.note }), createdAt: new Date().toISOString() };
  appendDecoy(file, decoy);
  if (values.json) printJson(decoy);
  else say(minted.secret === undefined ? minted.value : `${minted.value}\n${minted.secret}`);
  process.stderr.write(`keyward: decoy ${decoy.id} (${shape}) added to ${file}; plant the value above where attackers look (README "Decoy keys").\n`);
  if (fromEnv === undefined || (values.file !== undefined && values.file !== fromEnv)) {
    process.stderr.write(`keyward: Keyward watches for it once KEYWARD_DECOYS_FILE names ${file} and the server restarts.\n`);
  }
  return 0;
}

// ---- Tables and sentences (for people; --json is for scripts) ----

function columnWidths(rows: readonly (readonly string[])[], minimum: readonly number[] = []): number[] {
  const widths = [...minimum];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, printable(cell).length)));
  return widths;
}

/** One table line: every column padded to its width but the last; no trailing spaces. */
function formatRow(row: readonly string[], widths: readonly number[]): string {
  return row
    .map((cell, i) => (i === row.length - 1 ? printable(cell) : printable(cell).padEnd(widths[i] ?? 0)))
    .join('  ')
    .trimEnd();
}

function printTable(rows: readonly (readonly string[])[]): void {
  const widths = columnWidths(rows);
  for (const row of rows) say(formatRow(row, widths));
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
const keysPhrase = (fingerprints: readonly string[]) =>
  fingerprints.length === 0 ? 'no key' : `${fingerprints.length === 1 ? 'key' : 'keys'} ${fingerprints.join(', ')}`;

const VERSION_HEADER = ['UPSTREAM', 'FINGERPRINT', 'STATUS', 'VERSION', 'EXPIRES', 'NOTE'];
const ROTATION_HEADER = ['ROTATION', 'UPSTREAM', 'STATE', 'FROM', 'TO', 'CANARY', 'WHEN'];
/** Rotations shown under the versions (newest first); --json has every one the store keeps. */
const ROTATIONS_SHOWN = 10;

/** What a canary status means, in words. */
const canaryText = (status: number | null) => (status === null ? 'skipped' : status === 0 ? 'unreachable' : String(status));

/**
 * The version's status for people. A version whose rotation failed its canary never served: the ring retires
 * it at once (so it can never become a fallback), and it is shown as "canary failed", not as a retired key
 * with an expiry.
 */
function versionStatus(version: VersionView, rotations: readonly Rotation[]): { status: string; note: string; expires: boolean } {
  const failed = rotations.find((r) => r.toVersion === version.id);
  if (version.status !== 'revoked' && version.activatedAt === null && failed?.state === 'canary_failed') {
    const answer = failed.canaryStatus === 0 ? 'could not reach the upstream' : `answered ${failed.canaryStatus}`;
    return { status: 'canary failed', note: `the canary ${answer} (${utc(failed.at)}); never served`, expires: false };
  }
  const warning = version.warning ? `⚠ ${version.warning}` : '';
  switch (version.status) {
    case 'serving':
      return { status: 'serving', note: warning, expires: true };
    case 'fallback':
      return { status: 'fallback', note: join(`replaced; usable until ${utc(version.graceUntil ?? 0)} if no active key is`, warning), expires: true };
    case 'standby':
      return { status: 'standby', note: join('active, but a newer active key serves', warning), expires: true };
    case 'pending':
      return { status: 'pending', note: join(`serves from ${utc(version.notBefore ?? 0)}`, warning), expires: true };
    case 'next':
      return { status: 'next', note: join('added; serves once a rotation switches to it', warning), expires: true };
    case 'retired':
      return { status: 'retired', note: version.retiredAt === null ? '' : `retired ${utc(version.retiredAt)}`, expires: false };
    case 'revoked':
      return { status: 'revoked', note: version.revokedAt === null ? '' : `revoked ${utc(version.revokedAt)}`, expires: false };
    case 'expired':
      return { status: 'expired', note: `expired ${utc(version.expiresAt ?? 0)}`, expires: false };
    case 'refused':
    case 'unreadable':
      return { status: version.status, note: join(NEVER_SENT[version.status], warning), expires: true };
  }
}

const join = (...parts: string[]) => parts.filter((part) => part !== '').join('; ');

function printKeyList(rings: ReadonlyArray<{ upstream: string; versions: VersionView[]; rotations: Rotation[] }>): void {
  if (rings.length === 0) {
    say('No upstream uses a service key ({"env": …}), so there are no key versions to list.');
    return;
  }
  const rows = [VERSION_HEADER];
  for (const ring of rings) {
    for (const version of ring.versions) {
      const { status, note, expires } = versionStatus(version, ring.rotations);
      const expiry = !expires ? '-' : version.expiresAt === null ? 'never' : `${utc(version.expiresAt)} (${plural(version.expiresInDays ?? 0, 'day')})`;
      rows.push([ring.upstream, version.fingerprint, status, version.id, expiry, note]);
    }
  }
  printTable(rows);
  const rotations = rings
    .flatMap((ring) => ring.rotations)
    .sort((a, b) => b.at - a.at)
    .slice(0, ROTATIONS_SHOWN);
  if (rotations.length === 0) return;
  say('');
  printTable([
    ROTATION_HEADER,
    ...rotations.map((r) => [r.id, r.upstream, r.state.replace('_', ' '), r.from.join(', ') || '-', r.to, canaryText(r.canaryStatus), utc(r.at)]),
  ]);
}

function addedSentence(upstream: string, version: KeyVersion): string {
  if (version.state !== 'next') return `${upstream}: key ${version.fingerprint} is already on the ring (${version.state}); nothing changed.`;
  const expiry = version.expiresAt === null ? 'does not expire' : `expires ${utc(version.expiresAt)}`;
  return `${upstream}: added key ${version.fingerprint} (version ${version.id}, ${expiry}); it serves only once a rotation switches to it (keys rotate ${upstream} with the same key).`;
}

function rotationSentence(rotation: RotationResult): string {
  const { upstream, id } = rotation;
  if (rotation.repeated) {
    const what = rotation.state === 'rolled_back' ? 'switched and was rolled back' : 'switched';
    return `${upstream}: rotation ${id} already ${what} (key ${rotation.to}, ${utc(rotation.at)}); nothing changed (each rotation happens once). To switch to this key again, rotate with another --id${rotation.state === 'rolled_back' ? '' : ', or roll back the rotation after it'}.`;
  }
  const canary = rotation.canaryStatus === null ? 'without a canary call (--skip-canary)' : `after the canary call answered ${rotation.canaryStatus}`;
  const replaced = rotation.from.length === 0 ? '' : ` ${capitalise(keysPhrase(rotation.from))} ${rotation.from.length === 1 ? 'stays' : 'stay'} usable as a fallback for the grace window.`;
  return `${upstream}: switched to key ${rotation.to} ${canary}.${replaced} Undo with: ${INVOKED} keys rollback ${id}`;
}

function canaryFailedSentence(rotation: Rotation): string {
  const answer = rotation.canaryStatus === 0 ? 'the upstream could not be reached' : `upstream answered ${rotation.canaryStatus}`;
  const kept = rotation.from.length === 0 ? 'nothing was switched' : `the old ${keysPhrase(rotation.from)} ${rotation.from.length === 1 ? 'keeps' : 'keep'} serving`;
  return `canary call failed: ${answer}; ${kept} (${rotation.upstream}, rotation ${rotation.id}; the new key ${rotation.to} never served).`;
}

const capitalise = (text: string) => text.charAt(0).toUpperCase() + text.slice(1);

const ALERT_HEADER = ['ID', 'TIME (UTC)', 'RULE', 'STEP', 'USER', 'UPSTREAM', 'KEY', 'STATE'];
/** Alerts `alerts list` shows without --limit. */
const ALERTS_SHOWN = 20;

/** One alert as a row: who and what by id and fingerprint only (an alert never holds a key or a session id). */
function alertRow(alert: Alert): string[] {
  const { subject } = alert;
  return [alert.id, utc(Date.parse(alert.at)), alert.rule, alert.action, subject.userId ?? '-', subject.upstream ?? '-', subject.fingerprint ?? '-', alertState(alert)];
}

/**
 * The state as the Alerts page says it: open (took no action), active (until when), expired (a throttle that lifted
 * by itself), undone or dismissed by whom.
 */
function alertState(alert: Alert): string {
  if (alert.state === 'undone') return `${alert.action === 'alert' ? 'dismissed' : 'undone'} by ${alert.undoneBy ?? '?'}`;
  if (alert.state === 'expired') return 'expired';
  if (alert.action === 'alert') return 'open';
  return alert.expiresAt === undefined ? 'active until undone' : `active until ${utc(Date.parse(alert.expiresAt))}`;
}

/** What `alerts undo` did, in words (the Alerts page's, lib/core/api/alerts.ts undoAlert). */
function undoSentence(alert: Alert, repeated: boolean): string {
  const who = alert.subject.userId ?? 'the user';
  if (repeated) {
    const when = alert.undoneAt ? ` ${utc(Date.parse(alert.undoneAt))}` : '';
    return `alert ${alert.id} was undone already (by ${alert.undoneBy ?? '?'}${when}); nothing changed, and this undo is on the audit trail.`;
  }
  const lifted = {
    alert: 'dismissed (it took no action, so nothing is lifted)',
    throttle: `the throttle on ${who} is lifted`,
    reauth: `the sessions of ${who} that it ended work again`,
    revoke: `the sessions and own keys of ${who} are back as they were before the step`,
  }[alert.action];
  const detector = alert.action === 'alert' || alert.subject.userId === undefined ? '' : `; the detector starts over for ${who}, on every instance`;
  return `alert ${alert.id} (${alert.rule}, ${alert.action}) is undone: ${lifted}${detector}.`;
}

const AUDIT_HEADER = ['TIME (UTC)', 'TYPE', 'WHO', 'UPSTREAM', 'WHAT', 'RESULT', 'KEY'];
/** Widths that keep `--follow`'s later lines aligned with the first ones in the common case. */
const AUDIT_MIN_WIDTHS = [19, 5, 12, 8, 24, 18, 12];

function auditRow(record: AuditRecord): string[] {
  const time = record.at.slice(0, 19).replace('T', ' ');
  if (record.type === 'call') {
    const call: CallRecord = record;
    const result = `${call.status} ${call.outcome}${call.errorCode ? ` ${call.errorCode}` : ''} (${Math.round(call.durationMs)} ms)`;
    return [time, 'call', call.userId ?? '-', call.upstream, `${call.method} ${call.route ?? '-'}`, result, call.keyFingerprint ?? '-'];
  }
  const admin: AdminRecord = record;
  const what = [admin.action, admin.rotationId, admin.targetUser].filter((part) => part !== undefined).join(' ');
  return [time, 'admin', admin.actor, admin.upstream ?? '-', what, admin.outcome, admin.fingerprint ?? '-'];
}

/**
 * Exits once what was written to stdout has gone out: to a pipe (`audit export | jq`), stdout is asynchronous, and
 * exiting at once cut the output short (an export lost its last records, `schema | …` stopped at 64 KiB) with exit 0.
 */
function exitAfterOutput(code: number): void {
  process.stdout.write('', () => process.exit(code));
}

main(process.argv.slice(2)).then(
  (code) => exitAfterOutput(code),
  (error: unknown) => {
    // Keyward's own messages name the field, never a value; they may quote a document's text (an OpenAPI $ref), shown
    // escaped. Anything else: its code and system call (a file that cannot be written), never its message.
    const detail = systemErrorDetail(error);
    // Line by line: a message that lists several fields keeps its line breaks.
    const message =
      error instanceof ConfigError || error instanceof KeywardError
        ? error.message.split('\n').map(printable).join('\n')
        : `unexpected error${detail ? ` (${detail})` : ''}`;
    // An upstream this command line cannot see: say where it looked, and where the app's own upstreams are managed.
    const where = error instanceof KeywardError && error.code === 'upstream_not_found' ? upstreamSources.split('\n').map((line) => `\nkeyward: ${line}`).join('') : '';
    process.stderr.write(`keyward: ${message}${where}\n`);
    exitAfterOutput(1);
  },
);
