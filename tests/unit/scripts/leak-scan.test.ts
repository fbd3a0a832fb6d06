import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { mintDecoy } from '../../../lib/core/detect/mint';
import { encodedForms, scanBuild, scanFolder } from '../../../scripts/leak-scan';
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
