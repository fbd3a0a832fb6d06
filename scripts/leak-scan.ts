import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gunzipSync, brotliDecompressSync } from 'node:zlib';

/**
 * Scans every file under a folder for secret values in every form a build or a response could carry them:
 * raw, URL-encoded, base64 (standard, url-safe, unpadded), JSON-escaped and hex. Compressed files (.gz, .br)
 * are scanned decompressed too. Reports the file and the form, never the value.
 */
export interface LeakHit {
  readonly file: string;
  readonly name: string;
  readonly form: string;
}

/** Each distinct encoding of the value, named by the first form that produces it. */
export function encodedForms(value: string): Map<string, string> {
  const bytes = Buffer.from(value, 'utf8');
  const candidates: [string, string][] = [
    ['raw', value],
    ['url-encoded', encodeURIComponent(value)],
    ['json-escaped', JSON.stringify(value).slice(1, -1)],
    ['base64', bytes.toString('base64').replace(/=+$/, '')],
    ['base64url', bytes.toString('base64url')],
    ['hex', bytes.toString('hex')],
  ];
  const forms = new Map<string, string>();
  const seen = new Set<string>();
  for (const [form, text] of candidates) {
    if (seen.has(text)) continue;
    seen.add(text);
    forms.set(form, text);
  }
  return forms;
}

function* files(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (entry.isFile()) yield path;
  }
}

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

export function scanFolder(dir: string, secrets: Readonly<Record<string, string>>): LeakHit[] {
  const needles: { name: string; form: string; bytes: Buffer }[] = [];
  for (const [name, value] of Object.entries(secrets)) {
    for (const [form, text] of encodedForms(value)) needles.push({ name, form, bytes: Buffer.from(text, 'utf8') });
  }
  const hits: LeakHit[] = [];
  for (const path of files(dir)) {
    if (statSync(path).size > 256 * 1024 * 1024) continue;
    for (const data of contents(path)) {
      for (const needle of needles) {
        if (data.includes(needle.bytes)) hits.push({ file: relative(dir, path), name: needle.name, form: needle.form });
      }
    }
  }
  return hits;
}
