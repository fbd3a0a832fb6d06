import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { encodedForms, scanFolder } from '../../../scripts/leak-scan';
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
