/**
 * `node scripts/require-node.mjs`: run first by `npm run dev`, `build`, `start` and `keyward` (package.json
 * "scripts"). On a Node older than package.json's `engines.node`, Keyward would start and then crash deep
 * inside (`No such built-in module: node:sqlite` on Node 20, after the URL was printed); this says which Node
 * is needed instead, in one line, and exits 1. Plain JavaScript with nothing newer than Node 12's syntax, so
 * that it runs on exactly the old Node it is there to refuse. The version comes from package.json, never from
 * a copy of it here.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** `[major, minor, patch]` of "22.13.0", "v20.20.2" or "23.0.0-pre"; null if it is not a version. */
function parseVersion(text) {
  const match = /^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$/.exec(String(text).trim());
  return match ? [Number(match[1]), Number(match[2]), Number(match[3])] : null;
}

/**
 * Whether Node `version` satisfies `range`. Only the `>=x.y.z` form package.json uses is understood; any
 * other range throws, so that changing `engines.node` to another form fails loudly here, not silently.
 */
export function satisfies(version, range) {
  const minimum = /^>=\s*(\S+)$/.exec(String(range).trim());
  const wanted = minimum ? parseVersion(minimum[1]) : null;
  if (!wanted) throw new Error(`scripts/require-node.mjs understands engines.node ">=x.y.z" only, not "${range}"`);
  const running = parseVersion(version);
  if (!running) return false;
  for (let i = 0; i < 3; i++) {
    if (running[i] !== wanted[i]) return running[i] > wanted[i];
  }
  return true;
}

/** The one line to print when `version` does not satisfy `range`, or null when it does. */
export function nodeVersionProblem(version, range, executable) {
  if (satisfies(version, range)) return null;
  return `keyward: Node.js ${range} is required (package.json "engines"); this is Node.js ${version} at ${executable}.`;
}

/** package.json's `engines.node`. */
export function requiredNodeRange() {
  const manifest = JSON.parse(readFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), 'utf8'));
  return manifest.engines.node;
}

/** Whether this file is the script Node was asked to run (ESM resolves symlinks; argv[1] may not have). */
function isMain() {
  try {
    return Boolean(process.argv[1]) && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

// Run as a script (not imported by a test): check the Node that runs it.
if (isMain()) {
  const problem = nodeVersionProblem(process.versions.node, requiredNodeRange(), process.execPath);
  if (problem) {
    process.stderr.write(problem + '\n');
    process.exit(1);
  }
}
