import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../lib/core/config/error';
import {
  appendDecoy,
  DecoySet,
  findDecoyInRequest,
  loadDecoys,
  readDecoysFile,
  type Decoy,
} from '../../../lib/core/detect/decoys';
import { decoyId, mintDecoy, type DecoyShape } from '../../../lib/core/detect/mint';
import { expectedNamedForms } from '../scrub-oracle';

function decoy(shape: DecoyShape, note?: string): Decoy {
  return { id: decoyId(), ...mintDecoy(shape), ...(note ? { note } : {}), createdAt: new Date().toISOString() };
}

const openai = decoy('openai');
const github = decoy('github');
const aws = decoy('aws');
const decoys = new DecoySet([openai, github, aws]);

/** Feeds `chunks` through a watch: what it passed on before it found a decoy, and what it found. */
function watchAll(chunks: readonly Buffer[]): { passed: Buffer; found: string | null | undefined } {
  const watch = decoys.watch();
  const passed: Buffer[] = [];
  for (const chunk of chunks) {
    const out = watch.push(chunk);
    if (watch.found !== undefined) return { passed: Buffer.concat(passed), found: watch.found };
    passed.push(out);
  }
  const rest = watch.flush();
  if (watch.found === undefined) passed.push(rest);
  return { passed: Buffer.concat(passed), found: watch.found };
}

function cut(data: Buffer, at: readonly number[]): Buffer[] {
  const points = [0, ...at, data.length];
  return points.slice(1).map((end, i) => data.subarray(points[i], end));
}

describe('DecoySet.find', () => {
  // Forms written independently of lib/core/log/scrub.ts (tests/unit/scrub-oracle.ts).
  it.each(expectedNamedForms(openai.value).map(([name, form]) => [name, form] as const))(
    'finds the %s form',
    (_name, form) => {
      expect(decoys.find(`{"note":"x","payload":"..${form}..", "n": 1}`)).toBe(openai.id);
    },
  );

  it('finds a decoy inside a larger base64 blob at each byte alignment', () => {
    for (const before of ['', 'a', 'ab', 'abc']) {
      const blob = Buffer.from(`${before}user:${github.value}:rest`).toString('base64');
      expect(decoys.find(`Basic ${blob}`)).toBe(github.id);
    }
  });

  it("names the decoy found, the AWS secret access key as its decoy's", () => {
    expect(decoys.find(`token=${github.value}`)).toBe(github.id);
    expect(decoys.find(`AWS4-HMAC-SHA256 Credential=${aws.value}/20260101/us-east-1/s3/aws4_request`)).toBe(aws.id);
    expect(decoys.find(`aws_secret_access_key = ${aws.secret}`)).toBe(aws.id);
  });

  it('finds nothing in ordinary text, or in another key of the same shape', () => {
    expect(decoys.find('Bearer abc.def.ghi')).toBeNull();
    expect(decoys.find(mintDecoy('openai').value)).toBeNull();
    expect(decoys.find(mintDecoy('github').value)).toBeNull();
    expect(decoys.find(openai.value.slice(0, -1))).toBeNull();
  });
});

describe('DecoySet.watch (bodies, as they stream)', () => {
  const body = Buffer.from(`{"model":"gpt","messages":[{"role":"user","content":"use ${openai.value} please"}]}`);
  const start = body.indexOf(openai.value);

  it('finds a decoy split across two chunks at every position, before the whole decoy was passed on', () => {
    for (let at = 1; at < body.length; at++) {
      const { passed, found } = watchAll(cut(body, [at]));
      expect(found, `cut at ${at}`).toBe(openai.id);
      expect(passed.includes(openai.value), `cut at ${at}`).toBe(false);
      // Only the bytes before the decoy can have been passed on.
      expect(passed.length).toBeLessThanOrEqual(start);
    }
  });

  it("finds a whole decoy that ends a chunk with that chunk, though the end of a chunk is held back", () => {
    const watch = decoys.watch();
    watch.push(Buffer.from(`note=x&key=${openai.value}`));
    expect(watch.found).toBe(openai.id);
  });

  it('finds a decoy sent one byte per chunk', () => {
    const bytes = Array.from(body, (byte) => Buffer.from([byte]));
    expect(watchAll(bytes).found).toBe(openai.id);
  });

  it.each(expectedNamedForms(github.value).map(([name, form]) => [name, form] as const))(
    'finds the %s form split in three',
    (_name, form) => {
      const data = Buffer.from(`prefix ${form} suffix`);
      const third = Math.floor(data.length / 3);
      const { found, passed } = watchAll(cut(data, [third, 2 * third]));
      expect(found).toBe(github.id);
      expect(passed.includes(form)).toBe(false);
    },
  );

  it('passes a body without a decoy on byte for byte, however it is cut', () => {
    const clean = Buffer.from(`{"text":"${openai.value.slice(0, 40)} and sk-proj- and ${github.value.slice(0, 10)}"}`);
    for (let at = 1; at < clean.length; at += 3) {
      const { passed, found } = watchAll(cut(clean, [at, Math.min(clean.length, at + 7)]));
      expect(found).toBeUndefined();
      expect(passed.equals(clean)).toBe(true);
    }
  });
});

describe('findDecoyInRequest', () => {
  const url = (query = '') => new URL(`https://app.keyward.test/api/proxy/echo/items/1${query}`);
  const find = (headers: Record<string, string>, query = '', path: string[] = ['items', '1']) =>
    findDecoyInRequest(decoys, new Headers(headers), url(query), path);

  it('names the header, the query parameter or the path, never the value', () => {
    expect(find({ authorization: `Bearer ${openai.value}` })).toEqual({
      decoyId: openai.id,
      where: 'header:authorization',
    });
    expect(find({ 'x-api-key': github.value })).toEqual({ decoyId: github.id, where: 'header:x-api-key' });
    expect(find({ cookie: `theme=dark; api_key=${encodeURIComponent(openai.value)}` })).toEqual({
      decoyId: openai.id,
      where: 'header:cookie',
    });
    const basic = Buffer.from(`user:${aws.secret}`).toString('base64');
    expect(find({ authorization: `Basic ${basic}` })).toEqual({ decoyId: aws.id, where: 'header:authorization' });
    expect(find({}, `?page=2&key=${openai.value}`)).toEqual({ decoyId: openai.id, where: 'query:key' });
    expect(find({}, `?q=${Buffer.from(github.value).toString('base64url')}`)).toEqual({
      decoyId: github.id,
      where: 'query:q',
    });
    expect(find({}, '', ['items', github.value])).toEqual({ decoyId: github.id, where: 'path' });
  });

  it('finds a decoy written with needless percent escapes in the query', () => {
    const escaped = [...github.value].map((c) => `%${c.charCodeAt(0).toString(16)}`).join('');
    expect(find({}, `?token=${escaped}`)).toEqual({ decoyId: github.id, where: 'query:token' });
  });

  it('leaves out a name that is the decoy itself or not plain text', () => {
    // Header names arrive lower-cased (so only a lower-case decoy can be one).
    const lower = new DecoySet([{ id: 'decoy_lower', value: 'lowercase-decoy-value-0123456789' }]);
    expect(findDecoyInRequest(lower, new Headers({ 'lowercase-decoy-value-0123456789': '1' }), url(), [])).toEqual({
      decoyId: 'decoy_lower',
      where: 'header',
    });
    expect(find({}, `?${openai.value}=1`)).toEqual({ decoyId: openai.id, where: 'query' });
    expect(find({}, `?k%20%3Cb%3E=${openai.value}`)).toEqual({ decoyId: openai.id, where: 'query' });
  });

  it("does not read the Referer: the browser sends the page's address, which anyone's link can put a decoy in", () => {
    expect(find({ referer: `https://app.keyward.test/search?q=${openai.value}` })).toBeNull();
    // A decoy in a header the client itself chose still counts.
    expect(find({ referer: 'https://app.keyward.test/', authorization: `Bearer ${openai.value}` })).toEqual({ decoyId: openai.id, where: 'header:authorization' });
  });

  it('finds nothing in a request without a decoy', () => {
    expect(
      find({ authorization: 'Bearer x', cookie: 'a=b', 'x-api-key': mintDecoy('openai').value }, '?a=1&b=2'),
    ).toBeNull();
  });
});

describe('the decoys file', () => {
  const dir = () => mkdtempSync(join(tmpdir(), 'keyward-decoys-'));
  const messageOf = (fn: () => unknown) => {
    try {
      fn();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return (error as Error).message;
    }
    throw new Error('expected a ConfigError');
  };

  it('is created by the first decoy (readable by its owner only) and appended to after', () => {
    const file = join(dir(), 'keyward.decoys.json');
    const first = decoy('google', 'in .env.example');
    const second = decoy('aws');
    appendDecoy(file, first);
    appendDecoy(file, second);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readDecoysFile(file)).toEqual([first, second]);
    expect(loadDecoys(file)?.find(second.secret!)).toBe(second.id);
  });

  it('with no decoys, loads as none (nothing is scanned)', () => {
    const file = join(dir(), 'empty.json');
    writeFileSync(file, '{"decoys": []}');
    expect(loadDecoys(file)).toBeNull();
  });

  it('refuses a missing or unreadable file at start-up, naming the setting', () => {
    const file = join(dir(), 'missing.json');
    expect(messageOf(() => loadDecoys(file))).toContain(`KEYWARD_DECOYS_FILE: ${file} cannot be read (ENOENT)`);
    expect(readDecoysFile(file, 'empty')).toEqual([]);
    writeFileSync(file, '{"decoys": [');
    expect(messageOf(() => loadDecoys(file))).toContain('is not valid JSON');
  });

  it.each([
    ['a short value', { value: 'sk-short' }, 'decoys.0.value: must be at least 16 characters'],
    [
      'a value with a space',
      { value: 'sk-proj- with a space in it' },
      'decoys.0.value: must be printable ASCII without spaces',
    ],
    ['an unknown shape', { shape: 'paypal' }, 'decoys.0.shape:'],
    ['an unknown field', { token: 'x' }, 'decoys.0:'],
    ['a bad id', { id: 'a b' }, 'decoys.0.id:'],
    ['a bad date', { createdAt: 'yesterday' }, 'decoys.0.createdAt:'],
  ])('refuses %s, naming the field and never the value', (_what, change, message) => {
    const file = join(dir(), 'bad.json');
    const entry = { ...decoy('openai'), ...change };
    writeFileSync(file, JSON.stringify({ decoys: [entry] }));
    const text = messageOf(() => loadDecoys(file));
    expect(text).toContain(`KEYWARD_DECOYS_FILE (${file}) is invalid`);
    expect(text).toContain(message);
    expect(text).not.toContain(String(entry.value));
  });

  it('refuses two decoys with one id or one value', () => {
    const file = join(dir(), 'dup.json');
    const one = decoy('openai');
    writeFileSync(
      file,
      JSON.stringify({ decoys: [one, { ...decoy('github'), id: one.id }, { ...decoy('github'), value: one.value }] }),
    );
    const text = messageOf(() => loadDecoys(file));
    expect(text).toContain('decoys.1.id: is used by an earlier decoy');
    expect(text).toContain('decoys.2.value: is the value of an earlier decoy');
  });

  it('leaves an invalid file as it is rather than appending to it', () => {
    const file = join(dir(), 'broken.json');
    writeFileSync(file, '{"decoys": "no"}');
    expect(messageOf(() => appendDecoy(file, decoy('stripe')))).toContain('decoys:');
    expect(readFileSync(file, 'utf8')).toBe('{"decoys": "no"}');
  });
});
