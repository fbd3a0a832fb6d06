/**
 * `npm run keyward -- import <spec> --upstream <id>`: an upstream from an OpenAPI 3.0/3.1 document (JSON or
 * YAML), merged into the JSON config (README "Add an upstream"). The conversion is lib/core/config/openapi;
 * this file reads and writes files and asks which operations to expose: none unless chosen, by number in a
 * terminal, else by `--operations` or `--all`.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, relative, resolve, sep } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError } from '../lib/core/config/error';
import { withFileLock, writeTarget } from '../lib/core/config/file-lock';
import { argsProblem } from '../lib/node/args';
import { printable } from './printable';
import {
  buildUpstream,
  importableOperations,
  parseSpecText,
  planImport,
  selectOperations,
  type ImportPlan,
  type ImportResult,
  type PlannedOperation,
} from '../lib/core/config/openapi';
import { UPSTREAM_ID } from '../lib/core/config/schema';

export const IMPORT_USAGE =
  'usage: npm run keyward -- import <openapi.json|yaml> --upstream <id> [--out config/keyward.json] ' +
  '[--operations "GET /pets,POST /pets" | --all] [--base-url <url>] [--auth <scheme>] [--force]\n';

export interface ImportIo {
  readonly cwd: string;
  readonly stdin: NodeJS.ReadableStream;
  /** What was written (for scripts and people). */
  readonly stdout: NodeJS.WritableStream;
  /** Warnings, errors and the interactive chooser. */
  readonly stderr: NodeJS.WritableStream;
  /** Ask which operations to expose (stdin and stderr are a terminal). */
  readonly interactive: boolean;
}

const DEFAULT_OUT = 'config/keyward.json';

/** Runs the command; returns the exit code (0 written, 1 failed, 2 bad usage). Problems are ConfigErrors. */
export async function importCommand(args: readonly string[], io: ImportIo): Promise<number> {
  const say = (text: string) => io.stdout.write(`${text}\n`);
  const complain = (text: string) => io.stderr.write(`keyward: ${text}\n`);
  const usage = (problem: string) => {
    complain(problem);
    io.stderr.write(IMPORT_USAGE);
    return 2;
  };
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      allowPositionals: true,
      options: {
        upstream: { type: 'string' },
        out: { type: 'string', default: DEFAULT_OUT },
        operations: { type: 'string' },
        all: { type: 'boolean' },
        'base-url': { type: 'string' },
        auth: { type: 'string' },
        force: { type: 'boolean' },
      },
    });
  } catch (error) {
    const problem = argsProblem(error);
    if (problem === null) throw error;
    return usage(problem);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) return usage('import takes one OpenAPI document');
  if (!values.upstream) return usage('--upstream <id> names the upstream to write');
  if (!UPSTREAM_ID.test(values.upstream))
    return usage('--upstream: upstream ids are lowercase letters, digits, "-" and "_" (at most 63)');
  if (values.operations !== undefined && values.all) return usage('--operations and --all cannot be combined');
  const id = values.upstream;
  const specFile = resolve(io.cwd, positionals[0]!);
  const outFile = resolve(io.cwd, values.out);

  const plan = planImport(parseSpecText(readText(specFile, positionals[0]!), positionals[0]!), {
    baseUrl: values['base-url'],
  });
  if (plan.baseUrl === null) throw new ConfigError(plan.baseUrlProblem ?? 'no base URL: pass --base-url https://…');
  const config = readConfig(outFile, values.out);
  if (config && Object.hasOwn(config.upstreams, id) && !values.force) {
    throw new ConfigError(
      `${values.out} already has an upstream "${id}": pass --force to replace it, or choose another --upstream`,
    );
  }

  let selected: PlannedOperation[];
  if (values.operations !== undefined) {
    selected = selectOperations(plan, values.operations.split(','));
  } else if (values.all) {
    selected = importableOperations(plan);
    // What --all leaves out is said, as the chooser shows it: a route missing without a word would be found by a 404.
    for (const op of plan.operations) {
      if (op.skipped) io.stderr.write(`${printable(`keyward: ${op.method} ${op.path}: not imported: ${op.skipped}`)}\n`);
    }
  } else if (io.interactive) {
    selected = await chooseOperations(plan, io.stdin, io.stderr);
  } else {
    return usage(
      'no terminal to ask which operations to expose: pass --operations "GET /pets,POST /pets" (or operationIds), or --all',
    );
  }
  if (selected.length === 0) {
    complain(`no operation selected; nothing was written (an upstream needs at least one route)`);
    return 1;
  }

  const result = buildUpstream(plan, selected, { id, auth: values.auth });
  // Read again and written under the file's lock: another command may have added an upstream since (the choosing
  // above can take a while), and its upstream is kept.
  mkdirSync(dirname(outFile), { recursive: true });
  withFileLock(writeTarget(outFile, 0o644).path, () => {
    const current = readConfig(outFile, values.out);
    if (current && Object.hasOwn(current.upstreams, id) && !values.force && !(config && Object.hasOwn(config.upstreams, id))) {
      throw new ConfigError(`${values.out} already has an upstream "${id}": pass --force to replace it, or choose another --upstream`);
    }
    writeConfig(outFile, mergeUpstream(current, result, outFile, io.cwd));
  });
  report(result, values.out, plan, { say, warn: (line) => io.stderr.write(`${line}\n`) });
  return 0;
}

function readText(path: string, shown: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read ${shown} (${(error as NodeJS.ErrnoException).code ?? 'unknown error'})`);
  }
}

type ConfigFile = Record<string, unknown> & { upstreams: Record<string, unknown> };

/** The config file as it is (null: none yet). Only its shape is checked: the rest is other upstreams' business. */
function readConfig(path: string, shown: string): ConfigFile | null {
  if (!existsSync(path)) return null;
  let json: unknown;
  try {
    json = JSON.parse(readText(path, shown));
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw new ConfigError(`${shown} is not valid JSON; fix it or choose another --out`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    throw new ConfigError(`${shown} is not a Keyward config (a JSON object)`);
  const upstreams = (json as Record<string, unknown>).upstreams ?? {};
  if (upstreams === null || typeof upstreams !== 'object' || Array.isArray(upstreams))
    throw new ConfigError(`${shown}: "upstreams" is not an object`);
  return { ...(json as Record<string, unknown>), upstreams: upstreams as Record<string, unknown> };
}

/** The new upstream added to the file's (key order kept; a new file starts with `$schema` for editors). */
function mergeUpstream(config: ConfigFile | null, result: ImportResult, outFile: string, cwd: string): ConfigFile {
  const base: ConfigFile = config ?? {
    $schema: relative(dirname(outFile), resolve(cwd, 'keyward.schema.json')).split(sep).join('/'),
    upstreams: {},
  };
  return { ...base, upstreams: { ...base.upstreams, [result.id]: result.upstream } };
}

/**
 * Written whole or not at all: a temporary file renamed over the old one, keeping its mode (a 0600 config stays
 * 0600) and, where the path is a symbolic link, replacing the link's target, not the link.
 */
function writeConfig(path: string, config: ConfigFile): void {
  mkdirSync(dirname(path), { recursive: true });
  const target = writeTarget(path, 0o644);
  const text = configText(config);
  const temporary = `${target.path}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode: target.mode });
  chmodSync(temporary, target.mode);
  renameSync(temporary, target.path);
}

/**
 * The config file's text, refused past MAX_CONFIG_BYTES: shared `$ref`s fan out when each is written in place (an
 * 11 KB document came to a 91 MB config, which start-up then reads for seconds; a larger one past what a string can
 * hold).
 */
function configText(config: ConfigFile): string {
  let text: string;
  try {
    text = `${JSON.stringify(config, null, 2)}\n`;
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    text = '';
  }
  if (text === '' || text.length > MAX_CONFIG_BYTES) {
    throw new ConfigError(
      `the routes chosen write out to more than ${MAX_CONFIG_BYTES / 1024 / 1024} MB of config (the document's schemas repeat through shared $refs): choose fewer operations; nothing was written`,
    );
  }
  return text;
}

const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

function report(
  result: ImportResult,
  out: string,
  plan: ImportPlan,
  print: { say: (text: string) => void; warn: (text: string) => void },
): void {
  const { upstream } = result;
  const routes = upstream.routes;
  print.say(
    `keyward: wrote upstream "${result.id}" to ${out}: ${routes.length} route${routes.length === 1 ? '' : 's'} to ${upstream.baseUrl}`,
  );
  const width = Math.max(...routes.map((route) => route.method.length));
  for (const route of routes) {
    const contracts = [route.query && 'query', route.body && `${route.bodyFormat ?? 'json'} body`]
      .filter(Boolean)
      .join(', ');
    const note = route.roles ? '  (refused: not chosen, see below)' : contracts ? `  (contract: ${contracts})` : '';
    print.say(`  ${route.method.padEnd(width)}  ${printable(route.path)}${note}`);
  }
  const scheme =
    upstream.auth.type === 'header'
      ? `header "${upstream.auth.name}"`
      : upstream.auth.type === 'query'
        ? `query parameter "${upstream.auth.name}"`
        : upstream.auth.type;
  print.say(
    `Credential: ${scheme}, from ${result.env.join(' and ')} (the file names the variable${result.env.length === 1 ? '' : 's'}; never put a key in it).`,
  );
  print.say('Next:');
  print.say(
    `  1. set ${result.env.map((name) => `${name}=…`).join(' and ')} in .env.local (development) or the server's environment`,
  );
  print.say(`  2. KEYWARD_CONFIG=${out}`);
  print.say('  3. npm run keyward -- check-config');
  print.say('  4. npm run keyward -- types --out keyward-api.d.ts   (the typed client\'s types; again after each import)');
  print.say('Every route chosen needs only a signed-in user: add "roles" to limit who may call it (README "Access policy").');
  if (result.warnings.length === 0) return;
  print.warn(`keyward: what the routes of ${printable(plan.title)} do not keep exactly as the document says:`);
  for (const warning of result.warnings)
    print.warn(`  - ${printable(warning.operation ? `${warning.operation}: ${warning.message}` : warning.message)}`);
}

/**
 * Numbered list of the operations (importable ones get a number; the others say why not), then asks for numbers
 * and ranges until the answer reads. Nothing is selected unless typed; Enter (or end of input) selects none.
 */
export async function chooseOperations(
  plan: ImportPlan,
  input: NodeJS.ReadableStream,
  output: NodeJS.WritableStream,
): Promise<PlannedOperation[]> {
  const importable = importableOperations(plan);
  output.write(chooserText(plan));
  if (importable.length === 0) return [];
  const lines = createInterface({ input, output, terminal: false });
  try {
    for (;;) {
      const answer = await ask(lines, `Expose which? Numbers or ranges (1,3-5), "all", or Enter for none: `);
      if (answer === null) return [];
      const choice = parseSelection(answer, importable.length);
      if ('error' in choice) {
        output.write(`${choice.error}\n`);
        continue;
      }
      return choice.indexes.map((index) => importable[index]!);
    }
  } finally {
    lines.close();
  }
}

function ask(lines: ReturnType<typeof createInterface>, prompt: string): Promise<string | null> {
  return new Promise((resolveAnswer) => {
    const closed = () => resolveAnswer(null);
    lines.once('close', closed);
    lines.question(prompt, (answer) => {
      lines.off('close', closed);
      resolveAnswer(answer);
    });
  });
}

/** The chooser's list: number, method, path, operationId and summary, and marks (deprecated, body unchecked). */
export function chooserText(plan: ImportPlan): string {
  const importable = importableOperations(plan);
  const methodWidth = Math.max(0, ...plan.operations.map((op) => op.method.length));
  const pathWidth = Math.min(48, Math.max(0, ...plan.operations.map((op) => op.path.length)));
  const numberWidth = String(importable.length).length;
  const lines = [
    `${printable(plan.title)}: ${plan.operations.length} operation${plan.operations.length === 1 ? '' : 's'}. None is exposed unless you choose it.`,
  ];
  for (const op of plan.operations) {
    const index = importable.indexOf(op);
    const number = index === -1 ? '-'.padStart(numberWidth) : String(index + 1).padStart(numberWidth);
    const name = [op.operationId, op.summary].filter(Boolean).join(' — ');
    const marks = [
      op.deprecated && '[deprecated]',
      op.bodyUnchecked && '[body unchecked]',
      op.warnings.length > 0 && `[${op.warnings.length} note${op.warnings.length === 1 ? '' : 's'}]`,
    ]
      .filter(Boolean)
      .join(' ');
    const what = op.skipped ? `cannot be imported: ${op.skipped}` : [name, marks].filter(Boolean).join('  ');
    lines.push(`  ${number}  ${op.method.padEnd(methodWidth)}  ${op.path.padEnd(pathWidth)}  ${what}`.trimEnd());
  }
  for (const warning of plan.warnings)
    lines.push(`  ${'-'.padStart(numberWidth)}  ${warning.operation ?? ''}  ${warning.message}`);
  return `${lines.map(printable).join('\n')}\n`;
}

/** "1,3-5 7", "all", or "" (none) → zero-based indexes in the order given, each once. */
export function parseSelection(text: string, count: number): { indexes: number[] } | { error: string } {
  const tokens = text
    .trim()
    .split(/[\s,]+/)
    .filter((token) => token !== '');
  if (tokens.length === 1 && tokens[0]!.toLowerCase() === 'all') return { indexes: [...Array(count).keys()] };
  const indexes: number[] = [];
  for (const token of tokens) {
    const range = /^(\d{1,6})(?:-(\d{1,6}))?$/.exec(token);
    if (!range) return { error: `"${printable(token)}" is not a number or a range such as 3-5` };
    const from = Number(range[1]);
    const to = range[2] === undefined ? from : Number(range[2]);
    if (from < 1 || to > count || from > to) return { error: `${token} is not within 1-${count}` };
    for (let n = from; n <= to; n++) if (!indexes.includes(n - 1)) indexes.push(n - 1);
  }
  return { indexes };
}
