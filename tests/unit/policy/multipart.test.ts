import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, defineUpstream } from '../../../lib/core/config/load';
import { filePart, type UploadedFile } from '../../../lib/core/config/policy';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import type { KeywardErrorCode } from '../../../lib/core/errors';
import { capRequestBody } from '../../../lib/core/forward/body';
import { readContractBody, type ContractBody } from '../../../lib/core/policy/body';
import {
  applyCaps,
  applyIdentity,
  compileContract,
  type CompiledContract,
  type RequestParts,
} from '../../../lib/core/policy/contract';
import { MULTIPART_LIMITS, sanitizeFilename } from '../../../lib/core/policy/multipart';
import { sessionFromClaims, type Session } from '../../../lib/core/session/session';
import { expectKeywardError, rejected, thrown } from '../support';

type RouteInput = UpstreamInput['routes'][number];

function compiled(route: Omit<RouteInput, 'method' | 'path'>): CompiledContract {
  const { config } = defineUpstream('t', {
    baseUrl: 'https://api.example.com/v1/',
    auth: { type: 'bearer', secret: { env: 'API_KEY' } },
    routes: [{ method: 'POST', path: '/upload', bodyFormat: 'multipart', ...route }],
  });
  return compileContract(config.routes[0]!, 'upstreams.t.routes.0');
}

/** A transcription-style route: text fields, one capped audio file, repeated tags, a capped integer, an identity field. */
const AUDIO_ROUTE = {
  body: {
    type: 'object',
    required: ['model', 'file'],
    properties: {
      model: { type: 'string', enum: ['whisper-1', 'whisper-2'] },
      language: { type: 'string', maxLength: 8 },
      temperature: { type: 'number', minimum: 0, maximum: 1 },
      max_seconds: { type: 'integer', minimum: 1 },
      tags: { type: 'array', items: { type: 'string' }, maxItems: 3 },
      user: { type: 'string' },
      file: { type: 'file', maxBytes: 1024, contentTypes: ['audio/mpeg', 'audio/wav', 'video/*'] },
      extras: { type: 'array', items: { type: 'file', maxBytes: 64 }, maxItems: 2 },
    },
  },
  caps: { free: { 'body.max_seconds': 60 } },
  identity: { 'body.user': 'userId' },
} satisfies Omit<RouteInput, 'method' | 'path'>;
const AUDIO = compiled(AUDIO_ROUTE);

function session(roles: string[] = ['free']): Session {
  const built = sessionFromClaims({ sub: 'local:ada', exp: 4_102_444_800, sid: 'sid-1', roles, claims: {} }, 'cookie');
  if (!built) throw new Error('invalid test session');
  return built;
}

/** A body as the client sends it: FormData (encoded by undici, as fetch does) or raw bytes with their Content-Type. */
type ClientBody = FormData | { raw: string | Buffer; contentType: string };

/** The client's bytes, delivered in chunks of `chunk` bytes (busboy must cope with any split). */
async function clientBytes(body: ClientBody): Promise<{ bytes: Buffer; contentType: string }> {
  if (!(body instanceof FormData)) return { bytes: Buffer.from(body.raw), contentType: body.contentType };
  const request = new Request('https://app.example.com/', { method: 'POST', body });
  return { bytes: Buffer.from(await request.arrayBuffer()), contentType: request.headers.get('content-type')! };
}

function chunked(bytes: Buffer, chunk: number): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= bytes.length) return controller.close();
      controller.enqueue(new Uint8Array(bytes.subarray(offset, offset + chunk)));
      offset += chunk;
    },
  });
}

/** Steps 10's body half as the pipeline runs it: read, caps and identity on parts.body, then serialise. */
async function prepare(
  body: ClientBody,
  options: { contract?: CompiledContract; roles?: string[]; chunk?: number; maxBytes?: number } = {},
) {
  const contract = options.contract ?? AUDIO;
  const { bytes, contentType } = await clientBytes(body);
  const capped = capRequestBody(
    chunked(bytes, options.chunk ?? 64 * 1024),
    options.maxBytes ?? 64 * 1024 * 1024,
    10_000,
  );
  const read: ContractBody = await readContractBody(contract, contentType, capped);
  const head = structuredClone(read.value) as Record<string, unknown>;
  const parts: RequestParts = { query: new URLSearchParams(), body: read.value };
  applyCaps(contract, session(options.roles), parts);
  applyIdentity(contract, session(options.roles), parts);
  return { head, parts, out: () => read.serialize(parts.body) };
}

async function collect(body: AsyncIterable<Uint8Array> | Buffer): Promise<Buffer> {
  if (Buffer.isBuffer(body)) return body;
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

/** Forwards and reads the result back with an independent parser (undici's Response.formData). */
async function forwarded(body: ClientBody, options: Parameters<typeof prepare>[1] = {}) {
  const prepared = await prepare(body, options);
  const { body: out, contentType } = prepared.out();
  const bytes = await collect(out);
  const form = await new Response(new Uint8Array(bytes), { headers: { 'content-type': contentType } }).formData();
  return { ...prepared, bytes, text: bytes.toString('latin1'), form, contentType, streamed: !Buffer.isBuffer(out) };
}

/** Forwarding must fail with this code (thrown while the forwarded body streams, or before). */
async function forwardFails(
  body: ClientBody,
  code: KeywardErrorCode,
  options: Parameters<typeof prepare>[1] = {},
): Promise<string> {
  const error = await rejected(
    (async () => {
      const prepared = await prepare(body, options);
      await collect(prepared.out().body);
    })(),
  );
  return expectKeywardError(error, code).message;
}

const mp3 = (size: number, seed = 1) => new Blob([bytesOf(size, seed)], { type: 'audio/mpeg' });

function bytesOf(size: number, seed: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  let state = seed;
  for (let i = 0; i < size; i += 1) {
    state = (state * 1_103_515_245 + 12_345) >>> 0;
    out[i] = state >>> 24;
  }
  return out;
}

function formOf(entries: [string, string | Blob, string?][]): FormData {
  const form = new FormData();
  for (const [name, value, filename] of entries) {
    if (typeof value === 'string') form.append(name, value);
    else form.append(name, value, filename ?? 'a.mp3');
  }
  return form;
}

const KEYISH = 'sk_live_51H8xQ2eZvKYlo2C';

describe('multipart contracts: what is forwarded', () => {
  it('re-serialises text fields and the file under a fresh boundary; the head is typed for caps and identity', async () => {
    const audio = bytesOf(1000, 7);
    const result = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['temperature', '0.5'],
        ['tags', 'a'],
        ['tags', 'b'],
        ['file', new Blob([audio], { type: 'audio/mpeg' }), 'talk.mp3'],
        ['language', 'en'],
      ]),
    );
    expect(result.head).toEqual({ model: 'whisper-1', temperature: 0.5, tags: ['a', 'b'] });
    expect(result.contentType).toMatch(/^multipart\/form-data; boundary=keyward-[A-Za-z0-9_-]{24}$/);
    expect(result.streamed).toBe(true);
    // Client order kept; the cap (max_seconds, absent) and the identity field are added at the end.
    expect([...result.form.keys()]).toEqual([
      'model',
      'temperature',
      'tags',
      'tags',
      'file',
      'language',
      'max_seconds',
      'user',
    ]);
    expect(result.form.get('temperature')).toBe('0.5');
    expect(result.form.getAll('tags')).toEqual(['a', 'b']);
    expect(result.form.get('max_seconds')).toBe('60');
    expect(result.form.get('user')).toBe('local:ada');
    const file = result.form.get('file') as File;
    expect(file.name).toBe('talk.mp3');
    expect(file.type).toBe('audio/mpeg');
    expect(Buffer.from(await file.arrayBuffer()).equals(Buffer.from(audio))).toBe(true);
  });

  it('drops client part headers other than name, filename and media type, and normalises the media type', async () => {
    const boundary = 'xYz';
    const raw =
      `--${boundary}\r\nContent-Disposition: form-data; name="model"\r\nX-Note: ${KEYISH}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nwhisper-1\r\n` +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="C:\\Users\\ada\\talk.mp3"; size=3\r\n` +
      `Content-Type: Audio/MPEG; rate=44100\r\nContent-Language: en\r\nContent-Transfer-Encoding: binary\r\n\r\nabc\r\n--${boundary}--\r\n`;
    const result = await forwarded({ raw, contentType: `multipart/form-data; boundary=${boundary}` });
    expect(result.text).not.toContain(KEYISH);
    expect(result.text).not.toMatch(/X-Note|Content-Language|Content-Transfer-Encoding|size=3|rate=|charset/i);
    expect(result.text).toContain(
      'Content-Disposition: form-data; name="file"; filename="talk.mp3"\r\nContent-Type: audio/mpeg\r\n\r\nabc\r\n',
    );
  });

  it('reads any split of the client bytes the same (chunks of 1, 7 and 64 KiB)', async () => {
    const body = formOf([
      ['model', 'whisper-2'],
      ['file', mp3(900, 3)],
      ['extras', new Blob(['x'.repeat(64)]), 'one.bin'],
      ['extras', new Blob(['y']), 'two.bin'],
    ]);
    const results = await Promise.all([1, 7, 64 * 1024].map(async (chunk) => (await forwarded(body, { chunk })).form));
    for (const form of results) {
      expect([...form.keys()]).toEqual(['model', 'file', 'extras', 'extras', 'max_seconds', 'user']);
      expect(await (form.getAll('extras')[1] as File).text()).toBe('y');
      expect(
        createHash('sha256')
          .update(Buffer.from(await (form.get('file') as File).arrayBuffer()))
          .digest('hex'),
      ).toBe(createHash('sha256').update(bytesOf(900, 3)).digest('hex'));
    }
  });

  it('keeps UTF-8 filenames and text, and sanitises what could act as a path or split a header', async () => {
    const result = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['language', 'für'],
        ['file', mp3(3), 'résumé "final".mp3'],
      ]),
    );
    expect(result.form.get('language')).toBe('für');
    expect((result.form.get('file') as File).name).toBe('résumé _22final_22.mp3');
  });

  it('forwards a body without files as one buffer, checked whole before anything is sent', async () => {
    const contract = compiled({
      body: { type: 'object', properties: { note: { type: 'string' }, n: { type: 'integer' } } },
    });
    const result = await forwarded(
      formOf([
        ['note', 'hi'],
        ['n', '7'],
      ]),
      { contract },
    );
    expect(result.streamed).toBe(false);
    expect([...result.form.entries()]).toEqual([
      ['note', 'hi'],
      ['n', '7'],
    ]);
  });

  it('writes an identity field the client sent before the first file over in its place, and drops one sent after it', async () => {
    const before = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['user', KEYISH],
        ['file', mp3(3)],
      ]),
    );
    expect([...before.form.keys()]).toEqual(['model', 'user', 'file', 'max_seconds']);
    expect(before.form.get('user')).toBe('local:ada');
    const after = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['file', mp3(3)],
        ['user', KEYISH],
      ]),
    );
    expect([...after.form.keys()]).toEqual(['model', 'file', 'max_seconds', 'user']);
    expect(after.form.getAll('user')).toEqual(['local:ada']);
    expect(after.text).not.toContain(KEYISH);
  });

  it('checks a capped field against the caller’s cap wherever it comes, and sets it when missing', async () => {
    const head = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['max_seconds', '30'],
        ['file', mp3(3)],
      ]),
    );
    expect(head.form.getAll('max_seconds')).toEqual(['30']);
    const late = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['file', mp3(3)],
        ['max_seconds', '45'],
      ]),
    );
    expect([...late.form.keys()]).toEqual(['model', 'file', 'max_seconds', 'user']);
    expect(late.form.getAll('max_seconds')).toEqual(['45']);
    expect(
      await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['file', mp3(3)],
          ['max_seconds', '61'],
        ]),
        'contract_violation',
      ),
    ).toContain('body.max_seconds: must be at most 60 for your role');
    expect(
      await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['max_seconds', '61'],
          ['file', mp3(3)],
        ]),
        'contract_violation',
      ),
    ).toContain('body.max_seconds: must be at most 60 for your role');
    // A role without the cap sends what it likes, and nothing is added.
    const pro = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['file', mp3(3)],
        ['max_seconds', '600'],
      ]),
      { roles: ['pro'] },
    );
    expect(pro.form.getAll('max_seconds')).toEqual(['600']);
  });
});

describe('multipart contracts: what is refused', () => {
  it("refuses a field the call's cost is read from when it comes after a file part (the reservation was made without it)", async () => {
    const contract = compiled({ ...AUDIO_ROUTE, cost: { reserveFrom: { field: 'body.max_seconds' } } });
    const late = formOf([
      ['model', 'whisper-1'],
      ['file', mp3(3)],
      ['max_seconds', '30'],
    ]);
    expect(await forwardFails(late, 'contract_violation', { contract })).toContain('before the first file part');
    const early = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['max_seconds', '30'],
        ['file', mp3(3)],
      ]),
      { contract },
    );
    expect(early.form.get('max_seconds')).toBe('30');
  });

  it('refuses unknown text and file parts in the head, before anything is forwarded, without naming them', async () => {
    for (const body of [
      formOf([
        [KEYISH, 'x'],
        ['model', 'whisper-1'],
      ]),
      formOf([
        ['model', 'whisper-1'],
        [KEYISH, mp3(3)],
      ]),
    ]) {
      const error = await rejected(prepare(body).then((p) => collect(p.out().body)));
      const message = expectKeywardError(error, 'contract_violation').message;
      expect(message).toContain('body: unknown field');
      expect(message).not.toContain(KEYISH);
    }
    // In the head: readContractBody itself refuses, so the pipeline never opens the upstream request.
    expectKeywardError(await rejected(prepare(formOf([[KEYISH, 'x']]))), 'contract_violation');
  });

  it('refuses a text field or file given twice unless declared as an array, and arrays over maxItems', async () => {
    expect(
      await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['model', 'whisper-2'],
        ]),
        'contract_violation',
      ),
    ).toContain('body.model: given more than once');
    expect(
      await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['file', mp3(3)],
          ['file', mp3(3)],
        ]),
        'contract_violation',
      ),
    ).toContain('body.file: given more than once');
    const tags = formOf([
      ['model', 'whisper-1'],
      ['file', mp3(3)],
      ...(['a', 'b', 'c', 'd'].map((t) => ['tags', t]) as [string, string][]),
    ]);
    expect(await forwardFails(tags, 'contract_violation')).toContain('body.tags');
  });

  it('refuses a field of the wrong type when it arrives, and a missing required part at the end', async () => {
    expect(
      await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['temperature', 'hot'],
          ['file', mp3(3)],
        ]),
        'contract_violation',
      ),
    ).toContain('body.temperature: expected a number');
    expect(
      await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['file', mp3(3)],
          ['temperature', '2'],
        ]),
        'contract_violation',
      ),
    ).toContain('body.temperature');
    // No file part: the body ended in the head, so serialize() refuses before anything is sent.
    const missing = await prepare(formOf([['model', 'whisper-1']]));
    expect(
      expectKeywardError(
        thrown(() => missing.out()),
        'contract_violation',
      ).message,
    ).toContain('body.file');
  });

  it('refuses a file part of a media type the contract does not list (415), whatever its filename says', async () => {
    for (const type of ['image/png', 'text/plain', '']) {
      const message = await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['file', new Blob(['x'], { type }), 'a.mp3'],
        ]),
        'unsupported_media_type',
      );
      expect(message).toBe('The file part "file" has a media type this route does not accept.');
    }
    const video = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['file', new Blob(['x'], { type: 'video/mp4' }), 'a.mp4'],
      ]),
    );
    expect((video.form.get('file') as File).type).toBe('video/mp4');
  });

  it('refuses a file part over its own cap while it streams (413)', async () => {
    expect(
      await forwardFails(
        formOf([
          ['model', 'whisper-1'],
          ['file', mp3(1025)],
        ]),
        'payload_too_large',
      ),
    ).toBe('The file part "file" is larger than this route allows (1024 bytes).');
    const exact = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['file', mp3(1024)],
      ]),
    );
    expect((exact.form.get('file') as File).size).toBe(1024);
  });

  it('refuses a body over the route’s maxRequestBytes while it streams (413)', async () => {
    await forwardFails(
      formOf([
        ['model', 'whisper-1'],
        ['file', mp3(1000)],
      ]),
      'payload_too_large',
      { maxBytes: 800 },
    );
  });

  it('ends the forwarded body with a 400 when the client’s body breaks off mid-file (client gone)', async () => {
    const { bytes, contentType } = await clientBytes(
      formOf([
        ['model', 'whisper-1'],
        ['file', mp3(1000)],
      ]),
    );
    let sent = false;
    const broken = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent) return controller.error(new Error('socket hang up'));
        sent = true;
        controller.enqueue(new Uint8Array(bytes.subarray(0, bytes.length - 500)));
      },
    });
    const read = await readContractBody(AUDIO, contentType, capRequestBody(broken, 1 << 20, 10_000));
    const error = await rejected(collect(read.serialize(read.value).body));
    // Recorded as the client going away (lib/core/pipeline.ts refuse: outcome aborted), as for any body that breaks off.
    expect(expectKeywardError(error, 'bad_request').message).toBe('The client closed the request.');
  });

  it('refuses a body cut short, one without a boundary, and Content-Transfer-Encodings other than as-is', async () => {
    const boundary = 'b0undary';
    const head = `--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n`;
    const cut = `${head}--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\nContent-Type: audio/mpeg\r\n\r\nabc`;
    expect(
      await forwardFails({ raw: cut, contentType: `multipart/form-data; boundary=${boundary}` }, 'contract_violation'),
    ).toContain('not a valid multipart/form-data body');
    expect(await forwardFails({ raw: head, contentType: 'multipart/form-data' }, 'contract_violation')).toContain(
      'boundary is missing',
    );
    const base64 =
      `${head}--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\nContent-Type: audio/mpeg\r\n` +
      `Content-Transfer-Encoding: base64\r\n\r\nYWJj\r\n--${boundary}--\r\n`;
    expect(
      await forwardFails(
        { raw: base64, contentType: `multipart/form-data; boundary=${boundary}` },
        'contract_violation',
      ),
    ).toContain('body.file: Content-Transfer-Encoding is not supported');
  });

  it('bounds text held in memory and the number of parts', async () => {
    const big = formOf([['language', 'x'.repeat(MULTIPART_LIMITS.textBytes + 1)]]);
    expect(await forwardFails(big, 'contract_violation')).toContain('text fields are larger than');
    const contract = compiled({
      body: { type: 'object', properties: { t: { type: 'array', items: { type: 'string' } } } },
    });
    const many = formOf(Array.from({ length: MULTIPART_LIMITS.parts + 1 }, () => ['t', 'x'] as [string, string]));
    expect(await forwardFails(many, 'contract_violation', { contract })).toContain(
      `more than ${MULTIPART_LIMITS.parts} parts`,
    );
  });

  it('counts the fields caps and identity add under the parts limit, so none is pushed past the 1,000th part', async () => {
    const contract = compiled({
      body: {
        type: 'object',
        properties: {
          t: { type: 'array', items: { type: 'string' } },
          user: { type: 'string' },
          file: { type: 'file' },
        },
      },
      identity: { 'body.user': 'userId' },
    });
    const padding = (count: number) => Array.from({ length: count }, () => ['t', 'x'] as [string, string]);
    // Buffered (no file part) and streamed (the padding after a file part): the identity field would be part 1,001.
    for (const entries of [
      padding(MULTIPART_LIMITS.parts),
      [['file', mp3(8)], ...padding(MULTIPART_LIMITS.parts - 1)],
    ]) {
      expect(
        await forwardFails(formOf(entries as [string, string | Blob][]), 'contract_violation', { contract }),
      ).toContain(`more than ${MULTIPART_LIMITS.parts} parts with the fields Keyward adds`);
    }
    const fits = await forwarded(formOf([['file', mp3(8)], ...padding(MULTIPART_LIMITS.parts - 2)]), { contract });
    expect(fits.form.getAll('t')).toHaveLength(MULTIPART_LIMITS.parts - 2);
    expect(fits.form.get('user')).toBe('local:ada');
  });

  it('refuses other media types for the body (415)', async () => {
    const error = await rejected(prepare({ raw: '{"model":"whisper-1"}', contentType: 'application/json' }));
    expect(expectKeywardError(error, 'unsupported_media_type').message).toContain('multipart/form-data');
  });
});

describe('zod multipart contracts (TypeScript adapters)', () => {
  const contract = compiled({
    body: z
      .object({
        purpose: z.enum(['fine-tune', 'assistants']),
        count: z.coerce.number().int().max(5).optional(),
        file: filePart({ maxBytes: 100, contentTypes: ['application/jsonl'] }),
        more: z
          .array(filePart({ maxBytes: 10 }))
          .max(2)
          .optional(),
      })
      .refine((body) => body.purpose !== 'assistants' || body.more === undefined, {
        message: 'no extra files for assistants',
        path: ['more'],
      }),
  });

  it('gets strings for text fields (z.coerce) and an UploadedFile per file part', async () => {
    const seen: UploadedFile[] = [];
    const spy = compiled({
      body: z.object({ file: filePart() }).refine((body) => {
        seen.push(body.file);
        return true;
      }),
    });
    await forwarded(formOf([['file', new Blob(['hello'], { type: 'Text/Plain' }), '../x.txt']]), { contract: spy });
    expect(seen).toEqual([{ filename: 'x.txt', contentType: 'text/plain', bytes: 5 }]);
    const result = await forwarded(
      formOf([
        ['purpose', 'fine-tune'],
        ['count', '3'],
        ['file', new Blob(['{}'], { type: 'application/jsonl' }), 'd.jsonl'],
      ]),
      {
        contract,
      },
    );
    expect(result.head).toEqual({ purpose: 'fine-tune', count: 3 });
  });

  it('applies the file limits and the schema’s own refinements', async () => {
    const jsonl = (size: number) => new Blob(['x'.repeat(size)], { type: 'application/jsonl' });
    await forwardFails(
      formOf([
        ['purpose', 'fine-tune'],
        ['file', jsonl(101), 'd.jsonl'],
      ]),
      'payload_too_large',
      { contract },
    );
    await forwardFails(
      formOf([
        ['purpose', 'fine-tune'],
        ['file', new Blob(['x'], { type: 'text/csv' }), 'd.csv'],
      ]),
      'unsupported_media_type',
      { contract },
    );
    const refined = await forwardFails(
      formOf([
        ['purpose', 'assistants'],
        ['file', jsonl(1), 'd.jsonl'],
        ['more', new Blob(['1']), 'm.bin'],
      ]),
      'contract_violation',
      { contract },
    );
    expect(refined).toContain('body.more: no extra files for assistants');
  });

  it('refuses a zod multipart contract that is not an object, and part names that could split a header', () => {
    const notObject = thrown(() => compiled({ body: z.string() }));
    expect(notObject).toBeInstanceOf(ConfigError);
    expect((notObject as Error).message).toContain('a multipart contract is a z.object of its parts');
    const badName = thrown(() => compiled({ body: z.object({ 'a"b': z.string() }) }));
    expect(badName).toBeInstanceOf(ConfigError);
    // zod keeps no link from a refined schema to filePart's: it would quietly become a text field.
    const refined = thrown(() => compiled({ body: z.object({ file: filePart().refine((file) => file.bytes > 0) }) }));
    expect((refined as Error).message).toContain("refine the contract's object, not filePart()");
  });
});

describe('bracketed part names: `name[]` for arrays, `name[key]` for object fields (as the openai SDK sends them)', () => {
  const contract = compiled({
    body: z.object({
      model: z.string(),
      tags: z.array(z.string()).max(3).optional(),
      extras: z.array(filePart({ maxBytes: 10 })).optional(),
      mode: z
        .union([
          z.literal('auto'),
          z.strictObject({ type: z.literal('vad'), level: z.coerce.number().int().min(0).max(9).optional() }),
        ])
        .optional(),
      file: filePart(),
    }),
  });
  const options = { contract };

  it('reads them as their declared field, and forwards each part under the name the client gave it', async () => {
    const result = await forwarded(
      formOf([
        ['model', 'm'],
        ['tags[]', 'a'],
        ['tags[]', 'b'],
        ['mode[type]', 'vad'],
        ['mode[level]', '3'],
        ['file', mp3(5)],
        ['extras[]', new Blob(['x']), 'x.bin'],
      ]),
      options,
    );
    expect(result.head).toEqual({ model: 'm', tags: ['a', 'b'], mode: { type: 'vad', level: 3 } });
    expect([...result.form.keys()]).toEqual([
      'model',
      'tags[]',
      'tags[]',
      'mode[type]',
      'mode[level]',
      'file',
      'extras[]',
    ]);
    expect(result.form.get('mode[level]')).toBe('3');
    // After the first file part too, and in a declarative contract (AUDIO's tags).
    const later = await forwarded(
      formOf([
        ['model', 'm'],
        ['file', mp3(5)],
        ['mode[type]', 'vad'],
        ['tags[]', 'c'],
      ]),
      options,
    );
    expect([...later.form.keys()]).toEqual(['model', 'file', 'mode[type]', 'tags[]']);
    const audio = await forwarded(
      formOf([
        ['model', 'whisper-1'],
        ['tags[]', 'a'],
        ['file', mp3(3)],
      ]),
    );
    expect(audio.head).toMatchObject({ tags: ['a'] });
    expect(audio.form.getAll('tags[]')).toEqual(['a']);
    // The plain spellings still work: a repeated `tags`, `mode=auto`.
    const plain = await forwarded(
      formOf([
        ['model', 'm'],
        ['tags', 'a'],
        ['tags', 'b'],
        ['mode', 'auto'],
        ['file', mp3(5)],
      ]),
      options,
    );
    expect([...plain.form.keys()]).toEqual(['model', 'tags', 'tags', 'mode', 'file']);
  });

  it('refuses a bracketed name the contract does not declare, without naming it, in the head and after a file', async () => {
    const undeclared = [
      'model[]', // not an array
      'model[type]', // not an object
      'tags[0]', // arrays are read from `tags` or `tags[]` only
      'tags[type]',
      'mode[]',
      'mode[other]', // not one of the object's keys
      'mode[type][x]',
      'mode[ type]',
      'nope[]',
      'nope[type]',
      `tags[${KEYISH}]`,
      `${KEYISH}[]`,
    ];
    for (const name of undeclared) {
      for (const entries of [
        [
          ['model', 'm'],
          [name, 'x'],
          ['file', mp3(5)],
        ],
        [
          ['model', 'm'],
          ['file', mp3(5)],
          [name, 'x'],
        ],
      ] as [string, string | Blob][][]) {
        const message = await forwardFails(formOf(entries), 'contract_violation', options);
        expect(message, name).toContain('body: unknown field');
        expect(message).not.toContain(KEYISH);
      }
      // As a file part too (busboy streams an unknown name as a file: refused at its headers).
      const asFile = await forwardFails(
        formOf([
          ['model', 'm'],
          [name, new Blob(['x']), 'x.bin'],
        ]),
        'contract_violation',
        options,
      );
      expect(asFile, name).toContain('body: unknown field');
    }
  });

  it('refuses one field under two spellings, a member given twice or of the wrong type, and an incomplete object', async () => {
    const fails = (entries: [string, string | Blob][]) =>
      forwardFails(formOf([['model', 'm'], ...entries, ['file', mp3(5)]]), 'contract_violation', options);
    expect(
      await fails([
        ['tags', 'a'],
        ['tags[]', 'b'],
      ]),
    ).toContain('body.tags: sent under two part names');
    expect(
      await fails([
        ['mode', 'auto'],
        ['mode[type]', 'vad'],
      ]),
    ).toContain('body.mode: sent under two part names');
    expect(
      await fails([
        ['mode[type]', 'vad'],
        ['mode[type]', 'vad'],
      ]),
    ).toContain('body.mode.type: given more than once');
    expect(
      await fails([
        ['mode[type]', 'vad'],
        ['mode[level]', '12'],
      ]),
    ).toContain('body.mode.level');
    expect(await fails([['mode[type]', 'other']])).toContain('body.mode.type');
    // Each member is checked alone as it arrives; the object (here without its `type`) at the end.
    expect(await fails([['mode[level]', '1']])).toContain('body.mode');
    expect(await fails([['mode', 'vad']])).toContain('body.mode');
    const tooMany = await fails((['a', 'b', 'c', 'd'] as const).map((tag): [string, string] => ['tags[]', tag]));
    expect(tooMany).toContain('body.tags');
  });

  it('refuses object fields whose members could not be single text parts', () => {
    for (const member of [z.object({ x: z.string() }), z.array(z.string()), filePart()]) {
      const error = thrown(() => compiled({ body: z.object({ mode: z.object({ inner: member }) }) }));
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain('a multipart object holds text fields only');
    }
    const badKey = thrown(() => compiled({ body: z.object({ mode: z.object({ 'a]b': z.string() }) }) }));
    expect((badKey as Error).message).toContain('multipart object keys are letters, digits');
  });

  // The parts go upstream as sent: `mode[type]=b` with `mode[admin]=1` (a member of the other object) would pass a
  // plain z.object for "b", which drops what it does not know, and reach the upstream all the same.
  it('refuses a union of objects that are not all strict', () => {
    const union = (a: z.ZodObject, b: z.ZodObject) => compiled({ body: z.object({ mode: z.union([a, b]), file: filePart() }) });
    for (const [a, b] of [
      [z.object({ type: z.literal('a'), admin: z.string().optional() }), z.strictObject({ type: z.literal('b') })],
      [z.strictObject({ type: z.literal('a'), admin: z.string().optional() }), z.looseObject({ type: z.literal('b') })],
    ] as const) {
      const error = thrown(() => union(a, b));
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain('body.mode: the objects of a multipart union are z.strictObject');
    }
    union(z.strictObject({ type: z.literal('a'), admin: z.string().optional() }), z.strictObject({ type: z.literal('b') }));
    // One object alone is fine as it is: only its own keys are read as members.
    compiled({ body: z.object({ mode: z.object({ type: z.string() }), file: filePart() }) });
  });
});

describe('multipart contracts in the config', () => {
  it('refuses nested objects and arrays of arrays, and nested body targets for caps and identity', () => {
    for (const property of [
      { type: 'object', properties: {} },
      { type: 'array', items: { type: 'array', items: { type: 'string' } } },
    ] as const) {
      const error = thrown(() => compiled({ body: { type: 'object', properties: { p: property } } }));
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain('upstreams.t.routes.0.body.properties.p');
    }
    const nested = thrown(() =>
      compiled({
        body: { type: 'object', properties: { user: { type: 'string' } } },
        identity: { 'body.meta.user': 'userId' },
      }),
    );
    expect(nested).toBeInstanceOf(ConfigError);
    expect((nested as Error).message).toContain('must name a top-level part');
  });

  it('checks file specs: positive maxBytes, media types', () => {
    for (const file of [
      { type: 'file', maxBytes: 0 },
      { type: 'file', contentTypes: ['audio'] },
      { type: 'file', maxLength: 3 },
    ]) {
      expect(() => compiled({ body: { type: 'object', properties: { f: file as never } } })).toThrow(ConfigError);
    }
  });
});

describe('sanitizeFilename', () => {
  it.each([
    ['talk.mp3', 'talk.mp3'],
    ['..', 'file'],
    ['...hidden', 'hidden'],
    ['  spaced  .txt. ', 'spaced  .txt'],
    ['a"b\\c/d:e*f?g<h>i|j%k.txt', 'a_b_c_d_e_f_g_h_i_j_k.txt'],
    ['evil\u202Etxt.exe', 'eviltxt.exe'],
    ['line\r\nbreak\u0000.txt', 'linebreak.txt'],
    ['cafe\u0301.txt', 'café.txt'],
    [undefined, 'file'],
  ])('%j → %j', (input, expected) => {
    expect(sanitizeFilename(input)).toBe(expected);
  });

  it('never yields a name that could break out of its quotes or act as a path, and stays short', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 600 }), (name) => {
        const clean = sanitizeFilename(name);
        expect(clean).not.toMatch(/["\\/\r\n\0%]/);
        expect(clean === '.' || clean === '..' || clean.startsWith('.')).toBe(false);
        expect(Array.from(clean).length).toBeLessThanOrEqual(MULTIPART_LIMITS.filenameLength);
        expect(clean.length).toBeGreaterThan(0);
      }),
      { numRuns: 500 },
    );
  });
});
