import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { mintDecoy } from '../../../lib/core/detect/mint';
import { encodedForms, scanBuild, scanFolder, secretVariables } from '../../../scripts/leak-scan';
import { randomSecret } from '../../fixtures/secrets';

function tree(files: Record<string, string | Buffer>): string {
  const root = mkdtempSync(join(tmpdir(), 'keyward-scan-'));
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), content);
  }
  return root;
}

describe('scanFolder (npm run check:leaks)', () => {
  it('finds a secret in every encoded form, in nested and compressed files', () => {
    const secret = `${randomSecret('canary')}+/=`;
    const forms = encodedForms(secret);
    const files: Record<string, string | Buffer> = { 'clean.js': 'export const x = 1;' };
    for (const [form, text] of forms) files[`static/chunks/${form}.js`] = `var a="${text}";`;
    files['server/app/page.html.gz'] = gzipSync(Buffer.from(`<p>${secret}</p>`));
    const hits = scanFolder(tree(files), { DEMO_KEY: secret });
    for (const form of forms.keys()) {
      expect(hits).toContainEqual({ file: `static/chunks/${form}.js`, name: 'DEMO_KEY', form });
    }
    expect(hits).toContainEqual({ file: 'server/app/page.html.gz', name: 'DEMO_KEY', form: 'raw' });
    expect(hits.some((hit) => hit.file === 'clean.js')).toBe(false);
  });

  it('reports nothing for a clean tree and never includes the value in a hit', () => {
    const secret = randomSecret('canary');
    expect(scanFolder(tree({ 'a/b.html': '<p>hello</p>', 'c.rsc': '0:["$"]' }), { K: secret })).toEqual([]);
    const hits = scanFolder(tree({ 'x.map': `{"sourcesContent":["${secret}"]}` }), { K: secret });
    expect(hits).toHaveLength(1);
    expect(JSON.stringify(hits)).not.toContain(secret);
  });
});

describe('scanFolder: files a build does not usually write', () => {
  it('a symlink to a file is scanned (a dangling one is not a failure); a file too large to read whole is read in pieces', () => {
    const secret = randomSecret('canary');
    const outside = tree({ 'real.js': `var k="${secret}";` });
    const dir = tree({ 'clean.js': 'export {};' });
    symlinkSync(join(outside, 'real.js'), join(dir, 'linked.js'));
    symlinkSync(join(outside, 'gone.js'), join(dir, 'dangling.js'));
    expect(scanFolder(dir, { K: secret })).toContainEqual({ file: 'linked.js', name: 'K', form: 'raw' });
    // Pieces of 64 bytes: the value is cut by every piece boundary somewhere along the file, and still found.
    for (const at of [0, 30, 60, 63, 64, 100]) {
      const big = tree({ 'big.bin': `${'x'.repeat(at)}${secret}${'y'.repeat(200)}` });
      expect(scanFolder(big, { K: secret }, 64), `at ${at}`).toEqual([{ file: 'big.bin', name: 'K', form: 'raw' }]);
    }
    expect(scanFolder(tree({ 'big.bin': 'z'.repeat(1_000) }), { K: secret }, 64)).toEqual([]);
  });
});

describe('scanBuild (npm run check:leaks with decoys)', () => {
  it('reports a planted decoy as expected, not as a leak', () => {
    const secret = randomSecret('canary');
    const decoy = mintDecoy('openai').value;
    const scan = scanBuild(tree({ 'static/chunks/app.js': `const k="${decoy}";` }), { DEMO_KEY: secret }, { decoy_abc: decoy });
    expect(scan.leaks).toEqual([]);
    expect(scan.decoys).toContainEqual({ file: 'static/chunks/app.js', name: 'decoy_abc', form: 'raw' });
    expect(JSON.stringify(scan)).not.toContain(decoy);
  });

  it('still fails on a real secret found beside a decoy', () => {
    const secret = randomSecret('canary');
    const decoy = mintDecoy('github').value;
    const scan = scanBuild(tree({ 'static/chunks/app.js': `const k="${decoy}",s="${Buffer.from(secret).toString('base64')}";` }), { DEMO_KEY: secret }, { decoy_abc: decoy });
    expect(scan.leaks).toContainEqual({ file: 'static/chunks/app.js', name: 'DEMO_KEY', form: 'base64' });
    expect(scan.decoys.map((hit) => hit.name)).toEqual(['decoy_abc']);
  });

  it('scans for no decoy when there are none', () => {
    const secret = randomSecret('canary');
    expect(scanBuild(tree({ 'a.js': secret }), { K: secret }, {})).toEqual({ leaks: [{ file: 'a.js', name: 'K', form: 'raw' }], decoys: [] });
  });
});

describe('secretVariables (which variables npm run check:leaks fills with canaries)', () => {
  it("reads the config next build gets, from .env files too: presets' implied keys, JSON config, adapters and Keyward's own secrets", () => {
    const config = {
      upstreams: {
        llm: { preset: 'openai' },
        billing: { baseUrl: 'https://billing.example.com/', auth: { type: 'bearer', secret: { env: 'BILLING_KEY' } }, routes: [{ method: 'GET', path: '/x' }] },
      },
    };
    const inline = { upstreams: { claude: { preset: 'anthropic' } } };
    const cwd = tree({
      'keyward.json': JSON.stringify(config),
      // Next reads .env files for a build (.env.local too, though not under NODE_ENV=test, as here); the process
      // itself has neither setting.
      '.env': `KEYWARD_CONFIG=${'./keyward.json'}\nKEYWARD_CONFIG_JSON=${JSON.stringify(inline)}\n`,
    });
    const adapter = { id: 'maps', config: { baseUrl: 'https://maps.example.com/', auth: { type: 'query', name: 'key', secret: { env: 'MAPS_KEY' } }, routes: [] } };
    const { names, configPath } = secretVariables(cwd, [adapter as never]);
    expect(configPath).toBe(join(cwd, 'keyward.json'));
    for (const name of ['OPENAI_API_KEY', 'ANTHROPIC_API_KEY', 'BILLING_KEY', 'MAPS_KEY', 'AUTH_SECRET', 'KEYWARD_VAULT_SECRET', 'KEYWARD_METRICS_TOKEN']) {
      expect(names, name).toContain(name);
    }
  });

  it('and every variable whose name reads as a credential, from a .env file or the environment, that code may read without any {env} naming it', () => {
    const cwd = tree({
      'config/demo.json': JSON.stringify({ upstreams: {} }),
      '.env': 'STRIPE_SECRET_KEY=sk_from_env_file\nDB_PASSWORD=pw\nSERVICE_TOKEN=t\nNEXT_PUBLIC_MAPS_KEY=public\nAPP_NAME=shop\nKEYBOARD_LAYOUT=us\n',
    });
    process.env.PAYMENTS_API_KEY = 'from the environment';
    try {
      const { names } = secretVariables(cwd, []);
      for (const name of ['STRIPE_SECRET_KEY', 'DB_PASSWORD', 'SERVICE_TOKEN', 'PAYMENTS_API_KEY']) expect(names, name).toContain(name);
      for (const name of ['NEXT_PUBLIC_MAPS_KEY', 'APP_NAME', 'KEYBOARD_LAYOUT']) expect(names, name).not.toContain(name);
    } finally {
      delete process.env.PAYMENTS_API_KEY;
    }
  });

  it("with no config of one's own, the demo's", () => {
    const cwd = tree({ 'config/demo.json': JSON.stringify({ upstreams: { demo: { baseUrl: 'http://127.0.0.1:4010/', auth: { type: 'header', name: 'x-api-key', secret: { env: 'DEMO_UPSTREAM_KEY' } }, routes: [{ method: 'GET', path: '/x' }] } } }) });
    const { names, configPath } = secretVariables(cwd, []);
    expect(configPath).toBe(join(cwd, 'config', 'demo.json'));
    expect(names).toContain('DEMO_UPSTREAM_KEY');
  });
});
