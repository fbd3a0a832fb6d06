/**
 * `npm run package`: builds Keyward's library (lib/) as the installable package `keyward`, into dist/keyward/
 * (`--out <dir>` elsewhere), and with `--pack` also runs `npm pack` on it (the tarball lands beside the folder,
 * or in `--pack-destination <dir>`). README "Add Keyward to an existing Next.js app" says how an app uses it.
 *
 * The entry points are tsconfig.json's `paths` named `keyward/<name>`: this repository's app/ imports
 * `keyward/next` … through those same paths, so what the app uses here is what the package exports.
 *
 * - JavaScript: esbuild bundles the entry points together with code splitting, so a class shared by two entry
 *   points (KeywardError, the stores) exists once and `instanceof` holds across them; the `@/` aliases and
 *   extensionless imports are resolved, so plain Node and every bundler can load the output. Packages stay
 *   imports (`server-only` included: the app's bundler still refuses Keyward's server modules in client code).
 * - Types: the TypeScript compiler's declarations for the same files, with the `@/` aliases made relative.
 * - package.json: name, version and engines from this repository's; `dependencies` are exactly the packages the
 *   bundle imports, at this repository's pinned versions; Next.js, React and Auth.js are `peerDependencies`
 *   (the app's own copies must be the ones Keyward uses: two Nexts would not share a request's headers).
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import ts from 'typescript';

const root = fileURLToPath(new URL('..', import.meta.url));
const { values: args } = parseArgs({
  options: { out: { type: 'string' }, pack: { type: 'boolean' }, 'pack-destination': { type: 'string' } },
});
const out = resolve(args.out ?? join(root, 'dist', 'keyward'));

/** Peers: the app's own Next.js, React and Auth.js. react is not imported by lib/, but Next and Auth.js need it. */
const PEERS = ['next', 'next-auth', 'react'];
/** What the package holds besides package.json (npm adds README.md itself). */
const FILES = ['dist', 'types', 'keyward.schema.json'];

const rootManifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const entries = entryPoints();

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const imported = await buildJavaScript();
emitDeclarations();
writeManifest(imported);
copyFileSync(join(root, 'README.md'), join(out, 'README.md'));
copyFileSync(join(root, 'keyward.schema.json'), join(out, 'keyward.schema.json'));
console.log(
  `keyward ${rootManifest.version} built into ${relative(process.cwd(), out) || '.'} (${entries.map(([name]) => `keyward/${name}`).join(', ')})`,
);
if (args.pack) pack();

/** [name, source file] for each `keyward/<name>` in tsconfig.json's paths (read with TypeScript's own parser). */
function entryPoints() {
  const { config, error } = ts.readConfigFile(join(root, 'tsconfig.json'), ts.sys.readFile);
  if (error) throw new Error(ts.flattenDiagnosticMessageText(error.messageText, '\n'));
  const found = Object.entries(config.compilerOptions.paths ?? {})
    .filter(([alias]) => alias.startsWith('keyward/'))
    .map(([alias, [target]]) => [alias.slice('keyward/'.length), join(root, target)]);
  if (found.length === 0) throw new Error('tsconfig.json has no `keyward/<name>` paths: nothing to build');
  return found;
}

/** Bundles the entry points into <out>/dist/<name>.js (+ shared chunks); returns the packages they import. */
async function buildJavaScript() {
  const packages = new Set();
  await build({
    absWorkingDir: root,
    entryPoints: Object.fromEntries(entries),
    outdir: join(out, 'dist'),
    chunkNames: 'chunks/[name]-[hash]',
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'es2023',
    // Error classes keep their names in messages and logs, whatever the bundle had to rename.
    keepNames: true,
    tsconfig: join(root, 'tsconfig.json'),
    logLevel: 'warning',
    legalComments: 'none',
    plugins: [
      {
        name: 'keyward-package-externals',
        setup(builder) {
          // Bare imports are packages (dependencies or peers), loaded by the app; `@/…` and `keyward/…` are lib/.
          builder.onResolve({ filter: /^[^./]/ }, (args) => {
            if (args.path.startsWith('@/') || args.path.startsWith('keyward/')) return undefined;
            if (!isBuiltin(args.path)) packages.add(packageName(args.path));
            return { path: args.path, external: true };
          });
        },
      },
    ],
  });
  return packages;
}

/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
function packageName(specifier) {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/**
 * Declarations of the entry points and everything they import, under <out>/types/ (mirroring the repository).
 * The compiler keeps `@/lib/…` specifiers as written (it never rewrites `paths`), and an app cannot resolve
 * them, so they are made relative here, on the one alias form lib/ uses (a dependency such as tsc-alias would
 * also rewrite JavaScript, which esbuild already resolved).
 */
function emitDeclarations() {
  const parsed = ts.getParsedCommandLineOfConfigFile(
    join(root, 'tsconfig.json'),
    {},
    { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} },
  );
  const typesDir = join(out, 'types');
  const options = {
    ...parsed.options,
    noEmit: false,
    declaration: true,
    emitDeclarationOnly: true,
    declarationMap: false,
    incremental: false,
    tsBuildInfoFile: undefined,
    plugins: [],
    rootDir: root,
    outDir: typesDir,
  };
  const program = ts.createProgram(
    entries.map(([, file]) => file),
    options,
  );
  const diagnostics = [...ts.getPreEmitDiagnostics(program)];
  const result = program.emit(
    undefined,
    (fileName, text) => {
      mkdirSync(dirname(fileName), { recursive: true });
      writeFileSync(fileName, relativeAliases(fileName, text, typesDir));
    },
    undefined,
    true,
  );
  diagnostics.push(...result.diagnostics);
  if (diagnostics.length > 0) {
    const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => root, getNewLine: () => '\n' };
    throw new Error(`the package's declarations have errors:\n${ts.formatDiagnostics(diagnostics, host)}`);
  }
}

/** `from '@/lib/x'` and `import("@/lib/x")` in a declaration file → the relative path to <types>/lib/x. */
function relativeAliases(fileName, text, typesDir) {
  return text.replace(/(\bfrom\s+|\bimport\s*\(\s*|\bimport\s+)(['"])@\/([^'"]+)\2/g, (_, lead, quote, target) => {
    let path = relative(dirname(fileName), join(typesDir, target)).split('\\').join('/');
    if (!path.startsWith('.')) path = `./${path}`;
    return `${lead}${quote}${path}${quote}`;
  });
}

function writeManifest(imported) {
  const dependencies = {};
  const peerDependencies = {};
  for (const name of [...imported].sort()) {
    if (PEERS.includes(name)) continue;
    const version = rootManifest.dependencies?.[name];
    if (!version) throw new Error(`lib/ imports "${name}", which is not in package.json "dependencies"`);
    dependencies[name] = version;
  }
  for (const name of PEERS) {
    const version = rootManifest.dependencies?.[name];
    if (!version) throw new Error(`the peer "${name}" is not in package.json "dependencies"`);
    // A prerelease (next-auth 5 beta) may break anything between releases: the one Keyward is tested with.
    peerDependencies[name] = version.includes('-') ? version : `^${version}`;
  }
  const exports = Object.fromEntries(
    entries.map(([name, file]) => [
      `./${name}`,
      {
        types: `./${join('types', relative(root, file)).split('\\').join('/').replace(/\.ts$/, '.d.ts')}`,
        default: `./dist/${name}.js`,
      },
    ]),
  );
  const manifest = {
    name: rootManifest.name,
    version: rootManifest.version,
    description: rootManifest.description,
    type: 'module',
    engines: rootManifest.engines,
    exports: { ...exports, './keyward.schema.json': './keyward.schema.json', './package.json': './package.json' },
    files: FILES,
    dependencies,
    peerDependencies,
  };
  writeFileSync(join(out, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
}

/** `npm pack` on the built folder; prints the tarball's path. */
function pack() {
  const destination = resolve(args['pack-destination'] ?? dirname(out));
  mkdirSync(destination, { recursive: true });
  const [info] = JSON.parse(
    execFileSync('npm', ['pack', out, '--json', '--pack-destination', destination], { encoding: 'utf8' }),
  );
  console.log(join(destination, info.filename));
}
