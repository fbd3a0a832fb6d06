import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseSpecText, planImport } from '../../../lib/core/config/openapi';
import { chooseOperations, chooserText, parseSelection } from '../../../scripts/import-openapi';

/**
 * The interactive part of `keyward import`: the numbered list and the answer it reads. Driven through real
 * streams (a terminal is only a stream to readline); the command itself runs as a process in
 * tests/integration/openapi-import.test.ts.
 */

const plan = () =>
  planImport(
    parseSpecText(
      readFileSync(join(import.meta.dirname, '../../fixtures/openapi/inventory.json'), 'utf8'),
      'inventory.json',
    ),
  );

/** Starts the chooser, then types `lines` one by one (each after the previous prompt), then ends the input. */
async function choose(lines: string[]) {
  const input = new PassThrough();
  const output = new PassThrough();
  let shown = '';
  const prompts: (() => void)[] = [];
  output.on('data', (chunk: Buffer) => {
    shown += chunk.toString('utf8');
    if (shown.endsWith('or Enter for none: ')) prompts.shift()?.();
  });
  for (const line of lines) prompts.push(() => input.write(`${line}\n`));
  prompts.push(() => input.end());
  const chosen = await chooseOperations(plan(), input, output);
  return { keys: chosen.map((op) => op.key), shown };
}

describe('keyward import: choosing operations', () => {
  it('numbers the importable operations, marks deprecated and unchecked bodies, and says why others cannot be', () => {
    const text = chooserText(plan());
    const lines = text.trimEnd().split('\n');
    expect(lines[0]).toBe('Acme Inventory: 13 operations. None is exposed unless you choose it.');
    expect(lines).toContain('   1  GET     /items              listItems — List items  [3 notes]');
    expect(lines).toContain('   4  DELETE  /items/{item-id}    deleteItem  [deprecated] [1 note]');
    expect(lines).toContain('   7  POST    /items/search       searchItems  [body unchecked] [1 note]');
    expect(lines).toContain('   -  TRACE   /debug              cannot be imported: TRACE is never forwarded');
    expect(lines.at(-1)).toBe(
      '   -  /archive  skipped: its path item is in another file ("archive.yaml#/paths/~1archive"), which the import does not read',
    );
    expect(lines.filter((line) => /^ {2}[ \d]\d {2}/.test(line))).toHaveLength(10);
  });

  it('reads numbers and ranges, in the order typed; asks again after an answer it cannot read', async () => {
    const { keys, shown } = await choose(['2-3, x', '0', '5,1 2']);
    expect(keys).toEqual(['PATCH /items/{item-id}', 'GET /items', 'POST /items']);
    expect(shown).toContain('"x" is not a number or a range such as 3-5');
    expect(shown).toContain('0 is not within 1-10');
    expect(shown.match(/Expose which\?/g)).toHaveLength(3);
  });

  it('selects nothing on Enter or at the end of input, everything only when asked for', async () => {
    expect((await choose([''])).keys).toEqual([]);
    expect((await choose([])).keys).toEqual([]);
    expect((await choose(['all'])).keys).toHaveLength(10);
  });

  it('parseSelection', () => {
    expect(parseSelection('', 3)).toEqual({ indexes: [] });
    expect(parseSelection('3,1-2,2', 3)).toEqual({ indexes: [2, 0, 1] });
    expect(parseSelection('ALL', 2)).toEqual({ indexes: [0, 1] });
    expect(parseSelection('2-1', 3)).toEqual({ error: '2-1 is not within 1-3' });
    expect(parseSelection('4', 3)).toEqual({ error: '4 is not within 1-3' });
    expect(parseSelection('1;2', 3)).toEqual({ error: '"1;2" is not a number or a range such as 3-5' });
  });

  it('shows text from the document as escapes, never as terminal control sequences', () => {
    const evil = planImport({
      openapi: '3.0.3',
      info: { title: 'Evil\u001b]0;owned\u0007', version: '1' },
      servers: [{ url: 'https://api.example.com' }],
      paths: { '/x': { get: { summary: 'a\u001b[2Jb\u202ec\nd', responses: {} } } },
    });
    const text = chooserText(evil);
    expect(text).not.toMatch(/[\u001b\u0007\u202e]/);
    expect(text).toContain('Evil\\u001b]0;owned\\u0007');
    expect(text).toContain('a\\u001b[2Jb\\u202ec\\u000ad');
  });
});
