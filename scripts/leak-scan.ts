import { closeSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { gunzipSync, brotliDecompressSync } from 'node:zlib';
import nextEnv from '@next/env';
import { loadConfigFile, loadConfigJson, type UpstreamDefinition } from '../lib/core/config/load';
import { namedSecretForms } from '../lib/core/log/scrub';
import { OWN_SECRETS, referencedVariables } from '../lib/core/runtime';

/**
 * The secret variables a build of the app in `cwd` could read, for `npm run check:leaks` to fill with canaries:
 * Keyward's own, and every `{"env": …}` its upstreams name (presets' implied keys included: `{"preset":
 * "openai"}` reads OPENAI_API_KEY), connections' and the detector's too. The config is the one `next build` gets:
 * KEYWARD_CONFIG and KEYWARD_CONFIG_JSON from the environment or the .env files Next reads for a build (the
 * process's own variables win), and the TypeScript `adapters`; with neither setting, the demo's config.
 * Also every variable, set in the environment or a .env file, whose name reads as a credential (SECRET_NAME):
 * code can read one without any `{"env": …}` naming it (`process.env.STRIPE_SECRET_KEY` in an adapter's hook or
 * a page), and a build that inlines it leaks it all the same.
 */
export function secretVariables(cwd: string, adapters: readonly UpstreamDefinition[]): { names: Set<string>; configPath: string | undefined } {
  const silent = { info: () => {}, error: () => {} };
  // Read before @next/env: a reload puts back the process's variables as it first saw them.
  const processVariables = Object.keys(process.env);
  const env = nextEnv.loadEnvConfig(cwd, false, silent, true).combinedEnv;
  const named = [...processVariables, ...Object.keys(env)].filter((name) => SECRET_NAME.test(name) && !name.startsWith('NEXT_PUBLIC_'));
  const own = Boolean(env.KEYWARD_CONFIG || env.KEYWARD_CONFIG_JSON);
  const configPath = own ? (env.KEYWARD_CONFIG ? resolve(cwd, env.KEYWARD_CONFIG) : undefined) : join(cwd, 'config', 'demo.json');
  const files = [...(configPath ? [loadConfigFile(configPath)] : []), ...(env.KEYWARD_CONFIG_JSON ? [loadConfigJson(env.KEYWARD_CONFIG_JSON)] : [])];
  const configs = [adapters.map((definition) => definition.config), files.flatMap((file) => file.upstreams.map((definition) => definition.config)), files];
  return { names: new Set([...OWN_SECRETS, ...referencedVariables(configs), ...named]), configPath };
}

/**
 * A variable name that reads as a credential: a `KEY`, `SECRET`, `TOKEN`, `PASSWORD` or `CREDENTIALS` word
 * (`STRIPE_SECRET_KEY`, `GITHUB_TOKEN`, `DB_PASSWORD`, `OPENAI_API_KEY`). `NEXT_PUBLIC_` variables are public by
 * design (Next inlines them into the browser bundle); a decoy key is planted in one on purpose.
 */
const SECRET_NAME = /(?:^|_)(?:API_?KEY|KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)/;

/**
 * Scans every file under a folder for secret values in every form a build or a response could carry them: the
 * forms the leak scrubber knows (`secretForms` in lib/core/log/scrub.ts: raw, URL-encoded, JSON-escaped, `\u`
 * escapes, hex, base64 and base64url at every alignment). Compressed files (.gz, .br) are scanned
 * decompressed too. Reports the file and the form, never the value.
 */
export interface LeakHit {
  readonly file: string;
  readonly name: string;
  readonly form: string;
}

/** Each distinct encoding of the value, by the name of its form. */
export function encodedForms(value: string): Map<string, string> {
  return new Map([...namedSecretForms(value)].map(([text, form]) => [form, text]));
}

/** Every file under `dir`, a symlink to a file included (a symlinked folder is not followed: it could loop). */
function* files(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (entry.isFile() || (entry.isSymbolicLink() && isFile(path))) yield path;
  }
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false; // a dangling link
  }
}

/** Files up to this size are read whole (and decompressed); larger ones are read in pieces of this size. */
const WHOLE_FILE_BYTES = 256 * 1024 * 1024;

/** The file's bytes, whole, and decompressed too for .gz and .br. */
function contents(path: string): Buffer[] {
  const data = readFileSync(path);
  const out = [data];
  try {
    if (path.endsWith('.gz')) out.push(gunzipSync(data));
    if (path.endsWith('.br')) out.push(brotliDecompressSync(data));
  } catch {
    // not actually compressed: the raw bytes were scanned
  }
  return out;
}

/** A large file's bytes, piece by piece; each piece begins with the end of the last (`overlap` bytes), so a value across the cut is seen whole. */
function* pieces(path: string, pieceBytes: number, overlap: number): Generator<Buffer> {
  const fd = openSync(path, 'r');
  try {
    let carried = Buffer.alloc(0);
    for (;;) {
      const piece = Buffer.alloc(pieceBytes);
      const read = readSync(fd, piece, 0, pieceBytes, null);
      if (read === 0) return;
      const data = Buffer.concat([carried, piece.subarray(0, read)]);
      yield data;
      carried = data.subarray(Math.max(0, data.length - overlap));
    }
  } finally {
    closeSync(fd);
  }
}

export function scanFolder(dir: string, secrets: Readonly<Record<string, string>>, wholeFileBytes = WHOLE_FILE_BYTES): LeakHit[] {
  const needles: { name: string; form: string; bytes: Buffer }[] = [];
  for (const [name, value] of Object.entries(secrets)) {
    for (const [form, text] of encodedForms(value)) needles.push({ name, form, bytes: Buffer.from(text, 'utf8') });
  }
  const overlap = Math.max(0, ...needles.map((needle) => needle.bytes.length - 1));
  const hits: LeakHit[] = [];
  for (const path of files(dir)) {
    // A file too large to read whole (no build writes one, but nothing is skipped unseen) is read in pieces, undecompressed.
    const chunks = statSync(path).size > wholeFileBytes ? pieces(path, wholeFileBytes, overlap) : contents(path);
    const found = new Set<(typeof needles)[number]>();
    for (const data of chunks) {
      for (const needle of needles) if (!found.has(needle) && data.includes(needle.bytes)) found.add(needle);
    }
    for (const needle of needles) if (found.has(needle)) hits.push({ file: relative(dir, path), name: needle.name, form: needle.form });
  }
  return hits;
}

/** What check:leaks reports: leaks fail the scan; decoys found are expected (they are planted to be found). */
export interface BuildScan {
  readonly leaks: LeakHit[];
  readonly decoys: LeakHit[];
}

/**
 * Scans build output for the secrets (by variable name) and for the decoys (by decoy id; README "Decoy keys"):
 * a decoy planted in a bundle variable is in the output on purpose, so it is reported as expected and never
 * counted as a leak. A secret is a leak even where a decoy was found too.
 */
export function scanBuild(dir: string, secrets: Readonly<Record<string, string>>, decoys: Readonly<Record<string, string>>): BuildScan {
  return { leaks: scanFolder(dir, secrets), decoys: Object.keys(decoys).length > 0 ? scanFolder(dir, decoys) : [] };
}
