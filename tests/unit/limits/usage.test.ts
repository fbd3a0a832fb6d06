import { describe, expect, it } from 'vitest';
import { UsageReader, pricedUsage, sumAt, toUnits } from '../../../lib/core/limits/usage';

const encoder = new TextEncoder();
const TOKENS = { json: 'usage.total_tokens' };

/** Feeds `chunks` to a fresh reader and returns its result. */
function read(contentType: string, chunks: readonly (string | Uint8Array)[], path: { json: string | string[] } = TOKENS): number | null {
  const reader = new UsageReader(path, contentType);
  for (const chunk of chunks) reader.push(typeof chunk === 'string' ? encoder.encode(chunk) : chunk);
  return reader.result();
}

/** Every way of cutting `bytes` in two (including inside a multi-byte character), and byte by byte. */
function splits(bytes: Uint8Array): Uint8Array[][] {
  const out: Uint8Array[][] = [];
  for (let i = 0; i <= bytes.length; i++) out.push([bytes.subarray(0, i), bytes.subarray(i)]);
  out.push(Array.from(bytes, (_, i) => bytes.subarray(i, i + 1)));
  return out;
}

const sse = (...events: unknown[]) =>
  events.map((event) => `data: ${typeof event === 'string' ? event : JSON.stringify(event)}\n\n`).join('');

describe('UsageReader: JSON responses', () => {
  it("reads an array body from its last element that carries the field (Gemini's streamGenerateContent without alt=sse)", () => {
    const gemini = { json: ['usageMetadata.candidatesTokenCount'] };
    const chunks = [{ usageMetadata: { candidatesTokenCount: 5 } }, { text: 'x', usageMetadata: { candidatesTokenCount: 12 } }, { text: 'no usage' }];
    expect(read('application/json', [JSON.stringify(chunks)], gemini)).toBe(12);
    expect(read('application/json', [JSON.stringify([{ text: 'none' }])], gemini)).toBeNull();
    // A path into the array itself is read first, as before.
    expect(read('application/json', [JSON.stringify([{ usage: { total_tokens: 4 } }, { usage: { total_tokens: 9 } }])], { json: '0.usage.total_tokens' })).toBe(4);
  });

  it('reads a numeric field by its dotted path', () => {
    expect(
      read('application/json', [JSON.stringify({ id: 'x', usage: { prompt_tokens: 5, total_tokens: 123 } })]),
    ).toBe(123);
    expect(read('application/json; charset=utf-8', ['{"cost":7}'], { json: 'cost' })).toBe(7);
  });

  it('tries a list of paths in order: the first that holds a number wins', () => {
    const paths = { json: ['usage.total_tokens', 'response.usage.total_tokens'] };
    expect(read('application/json', ['{"usage":{"total_tokens":12}}'], paths)).toBe(12);
    expect(read('application/json', ['{"usage":{"total_tokens":"n/a"},"response":{"usage":{"total_tokens":30}}}'], paths)).toBe(30);
    // A stream's final event (the Responses API's `response.completed`) carries it under `response`.
    const stream = sse({ type: 'response.output_text.delta', delta: 'hi' }, { type: 'response.completed', response: { usage: { total_tokens: 77 } } });
    expect(read('text/event-stream', [stream], paths)).toBe(77);
    expect(read('application/json', ['{"other":1}'], paths)).toBeNull();
    expect(read('application/vnd.api+json', ['{"a":{"b":{"c":9}}}'], { json: 'a.b.c' })).toBe(9);
    expect(read('Application/JSON', ['{"cost":7}'], { json: 'cost' })).toBe(7);
  });

  it('rounds fractional usage up and accepts a numeric string', () => {
    expect(read('application/json', ['{"usage":{"total_tokens":12.01}}'])).toBe(13);
    expect(read('application/json', ['{"usage":{"total_tokens":"40"}}'])).toBe(40);
    expect(read('application/json', ['{"usage":{"total_tokens":0}}'])).toBe(0);
  });

  it('is null when the field is missing, not a usable number, or the body is not JSON', () => {
    expect(read('application/json', ['{"usage":{}}'])).toBeNull();
    expect(read('application/json', ['{}'])).toBeNull();
    expect(read('application/json', ['{"usage":5}'])).toBeNull();
    expect(read('application/json', ['{"usage":null}'])).toBeNull();
    expect(read('application/json', ['{"usage":{"total_tokens":-1}}'])).toBeNull();
    expect(read('application/json', ['{"usage":{"total_tokens":"many"}}'])).toBeNull();
    expect(read('application/json', ['{"usage":{"total_tokens":true}}'])).toBeNull();
    expect(read('application/json', ['{"usage":{"total_tokens":[5]}}'])).toBeNull();
    expect(read('application/json', ['{"usage":{"total_tokens":5}'])).toBeNull();
    expect(read('application/json', ['<html>502</html>'])).toBeNull();
    expect(read('application/json', [])).toBeNull();
  });

  it('reads own fields only, never inherited ones', () => {
    expect(read('application/json', ['{}'], { json: 'constructor' })).toBeNull();
    expect(read('application/json', ['{"a":{}}'], { json: 'a.toString' })).toBeNull();
    expect(read('application/json', ['{"a":{}}'], { json: 'a.__proto__' })).toBeNull();
  });

  it('is null for a response that is not JSON, even if its body is', () => {
    const body = '{"usage":{"total_tokens":5}}';
    expect(read('text/plain', [body])).toBeNull();
    expect(read('text/html; charset=utf-8', [body])).toBeNull();
    expect(read('', [body])).toBeNull();
    expect(read('application/octet-stream', [body])).toBeNull();
  });

  it('gives the same result wherever the chunks are cut, also inside a multi-byte character', () => {
    const bytes = encoder.encode(JSON.stringify({ text: 'héllo 🌍 wörld', usage: { total_tokens: 321 } }));
    for (const chunks of splits(bytes)) expect(read('application/json', chunks)).toBe(321);
  });

  it('reads a body of up to 1 MiB and is null for a larger one', () => {
    const head = '{"usage":{"total_tokens":77},"pad":"';
    const tail = '"}';
    const fill = (size: number) => head + 'x'.repeat(size - head.length - tail.length) + tail;
    const exact = fill(1024 * 1024);
    expect(encoder.encode(exact).length).toBe(1024 * 1024);
    expect(read('application/json', [exact])).toBe(77);
    // The same text one byte over, in many chunks: the reader gives up rather than buffering it.
    const over = encoder.encode(fill(1024 * 1024 + 1));
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < over.length; i += 64 * 1024) chunks.push(over.subarray(i, i + 64 * 1024));
    expect(read('application/json', chunks)).toBeNull();
  });

  it('copies nothing it does not need: chunks pushed after an overflow are ignored', () => {
    const reader = new UsageReader(TOKENS, 'application/json');
    reader.push(new Uint8Array(1024 * 1024 + 1));
    reader.push(encoder.encode('{"usage":{"total_tokens":1}}'));
    expect(reader.result()).toBeNull();
  });
});

describe('UsageReader: Server-Sent Events', () => {
  const chunk = (text: string) => ({ choices: [{ delta: { content: text } }] });
  const final = (tokens: number) => ({ choices: [], usage: { prompt_tokens: 3, total_tokens: tokens } });

  it('reads the last event that carries the field (OpenAI streams end with usage, then [DONE])', () => {
    expect(read('text/event-stream', [sse(chunk('a'), chunk('b'), final(58), '[DONE]')])).toBe(58);
    expect(read('text/event-stream; charset=utf-8', [sse(final(10), chunk('x'), final(20), chunk('y'))])).toBe(20);
    expect(read('Text/Event-Stream', [sse(final(9))])).toBe(9);
  });

  it('accepts "data:" without a space and CRLF line ends, and skips comments, ids and event names', () => {
    const text =
      ': keep-alive\r\nevent: message\r\nid: 1\r\ndata:{"usage":{"total_tokens":31}}\r\n\r\nevent: done\r\ndata: [DONE]\r\n\r\n';
    expect(read('text/event-stream', [text])).toBe(31);
  });

  it('is null when no event carries the field, or the stream is not SSE', () => {
    expect(read('text/event-stream', [sse(chunk('a'), chunk('b'), '[DONE]')])).toBeNull();
    expect(read('text/event-stream', [''])).toBeNull();
    expect(read('text/event-stream', ['usage: {"usage":{"total_tokens":3}}\n\n'])).toBeNull();
    expect(read('text/plain', [sse(final(5))])).toBeNull();
  });

  it('gives the same result wherever the chunks are cut', () => {
    const bytes = encoder.encode(sse(chunk('héllo'), chunk('🌍'), final(44), '[DONE]'));
    for (const chunks of splits(bytes)) expect(read('text/event-stream', chunks)).toBe(44);
  });

  it('keeps the tail of a long stream: usage at the end of many megabytes is read', () => {
    const reader = new UsageReader(TOKENS, 'text/event-stream');
    const filler = encoder.encode(sse(chunk('x'.repeat(1000))));
    for (let i = 0; i < 5_000; i++) reader.push(filler);
    // The final event arrives cut in three, the way a network delivers it.
    const last = encoder.encode(sse(final(4242), '[DONE]'));
    reader.push(last.subarray(0, 7));
    reader.push(last.subarray(7, 30));
    reader.push(last.subarray(30));
    expect(reader.result()).toBe(4242);
  });

  it('keeps only the tail: usage reported long before the end of a long stream is not kept', () => {
    const reader = new UsageReader(TOKENS, 'text/event-stream');
    reader.push(encoder.encode(sse(final(1))));
    const filler = encoder.encode(sse(chunk('x'.repeat(1000))));
    for (let i = 0; i < 500; i++) reader.push(filler);
    expect(reader.result()).toBeNull();
  });

  it('keeps the whole last event with the usage however long it is (up to 1 MiB), wherever the chunks are cut', () => {
    // OpenAI Responses' `response.completed` repeats the whole response, its instructions included (the usage is
    // read here at this file's path, `usage.total_tokens`).
    const completed = (instructions: string) => ({ type: 'response.completed', response: { instructions }, usage: { total_tokens: 7 } });
    for (const size of [1_000, 70_000, 100_000, 900_000]) {
      for (const cut of size > 100_000 ? [3, 16 * 1024, 100_003] : [1, 3, 16 * 1024, 100_003]) {
        const reader = new UsageReader(TOKENS, 'text/event-stream');
        const bytes = encoder.encode(sse(chunk('a'), ...Array.from({ length: 100 }, () => chunk('x'.repeat(1000))), completed('i'.repeat(size))));
        for (let i = 0; i < bytes.length; i += cut) reader.push(bytes.subarray(i, i + cut));
        expect(reader.result(), `${size} in ${cut}-byte chunks`).toBe(7);
      }
    }
    // CRLF blank lines, cut between their bytes, too.
    const crlf = encoder.encode(`data: {"x":"${'y'.repeat(70_000)}"}\r\n\r\ndata: {"usage":{"total_tokens":9},"pad":"${'p'.repeat(90_000)}"}\r\n\r\n`);
    const reader = new UsageReader(TOKENS, 'text/event-stream');
    for (let i = 0; i < crlf.length; i += 2) reader.push(crlf.subarray(i, i + 2));
    expect(reader.result()).toBe(9);
  });

  it('keeps no more than 1 MiB past the tail: an event longer than that is not read', () => {
    const reader = new UsageReader(TOKENS, 'text/event-stream');
    const bytes = encoder.encode(sse({ usage: { total_tokens: 3 }, pad: 'p'.repeat(1_200_000) }));
    for (let i = 0; i < bytes.length; i += 16 * 1024) reader.push(bytes.subarray(i, i + 16 * 1024));
    expect(reader.result()).toBeNull();
  });

  it('reads the last usage when the stream is one big chunk', () => {
    const text = sse(final(5)) + sse(chunk('x'.repeat(200_000))) + sse(final(6));
    expect(read('text/event-stream', [text])).toBe(6);
  });
});

describe('toUnits', () => {
  it.each<[unknown, number | null]>([
    [0, 0],
    [1, 1],
    [1.2, 2],
    [0.0001, 1],
    [41.999, 42],
    ['7', 7],
    ['7.5', 8],
    [' 12 ', 12],
    ['1e3', 1000],
    [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
    [1e300, Number.MAX_SAFE_INTEGER],
    [-1, null],
    [-0.5, null],
    ['-3', null],
    ['', null],
    ['   ', null],
    ['ten', null],
    [Number.NaN, null],
    [Number.POSITIVE_INFINITY, null],
    ['Infinity', null],
    [true, null],
    [null, null],
    [undefined, null],
    [[5], null],
    [{ n: 5 }, null],
  ])('%j → %j', (value, units) => {
    expect(toUnits(value)).toBe(units);
  });
});

describe('UsageReader: SSE events whose data spans several lines', () => {
  it('joins the data lines of one event before reading it (the SSE event-stream rules)', () => {
    const reader = new UsageReader({ json: 'usage.total_tokens' }, 'text/event-stream');
    reader.push(Buffer.from('data: {"choices":[]}\n\ndata: {"usage":\ndata: {"total_tokens": 42}}\n\n'));
    expect(reader.result()).toBe(42);
  });

  it('does not join lines of different events', () => {
    const reader = new UsageReader({ json: 'usage.total_tokens' }, 'text/event-stream');
    reader.push(Buffer.from('data: {"usage":\n\ndata: {"total_tokens": 42}}\n\n'));
    expect(reader.result()).toBeNull();
  });
});

describe('pricedUsage: cost from a price table', () => {
  const price = { input: 0.4, output: 1.6 };
  const paths = { inputTokens: ['usage.prompt_tokens'], extraInputTokens: [], outputTokens: ['usage.completion_tokens'] };
  const priced = (inputBound = 1000) => pricedUsage(paths, price, inputBound);

  it('charges reported input and output tokens at their prices, rounded up to whole units', () => {
    const reader = new UsageReader(priced(), 'application/json');
    reader.push(encoder.encode(JSON.stringify({ usage: { prompt_tokens: 1000, completion_tokens: 250 } })));
    expect(reader.result()).toBe(800); // 1000 × 0.4 + 250 × 1.6
    const odd = new UsageReader(priced(), 'application/json');
    odd.push(encoder.encode(JSON.stringify({ usage: { prompt_tokens: 1, completion_tokens: 1 } })));
    expect(odd.result()).toBe(2); // 2.0 exactly
    const third = new UsageReader(pricedUsage({ inputTokens: ['i'], extraInputTokens: [], outputTokens: ['o'] }, { input: 0.1, output: 0 }, 0), 'application/json');
    third.push(encoder.encode('{"i":3,"o":0}'));
    expect(third.result()).toBe(1); // 0.3 rounds up
  });

  it('charges the reserved input bound when the event reports output tokens only', () => {
    const reader = new UsageReader(priced(500), 'text/event-stream');
    reader.push(encoder.encode(sse({ usage: { completion_tokens: 10 } })));
    expect(reader.result()).toBe(500 * 0.4 + 10 * 1.6);
  });

  it('reports nothing without output tokens: the reservation stays charged', () => {
    const reader = new UsageReader(priced(), 'application/json');
    reader.push(encoder.encode(JSON.stringify({ usage: { prompt_tokens: 1000 } })));
    expect(reader.result()).toBeNull();
  });
});

describe('pricedUsage: cached input and routes without output', () => {
  it('adds input reported apart at its own share of the input price (Anthropic\'s prompt cache)', () => {
    const cached = pricedUsage(
      {
        inputTokens: ['usage.input_tokens'],
        extraInputTokens: [
          { path: 'usage.cache_creation_input_tokens', times: 1.25 },
          { path: 'usage.cache_read_input_tokens', times: 0.1 },
        ],
        outputTokens: ['usage.output_tokens'],
      },
      { input: 1, output: 5 },
      999_999,
    );
    expect(cached({ usage: { input_tokens: 3, cache_creation_input_tokens: 40_000, cache_read_input_tokens: 10_000, output_tokens: 10 } })).toBe(
      3 + 50_000 + 1_000 + 50,
    );
    expect(cached({ usage: { input_tokens: 3, output_tokens: 10 } })).toBe(53);
  });

  it('past the long-context threshold, every token of the call is charged at the long-context prices', () => {
    const long = pricedUsage(
      {
        inputTokens: ['usage.input_tokens'],
        extraInputTokens: [
          { path: 'usage.cache_creation_input_tokens', times: 2 },
          { path: 'usage.cache_creation.ephemeral_5m_input_tokens', times: -0.75 },
          { path: 'usage.cache_read_input_tokens', times: 0.1 },
        ],
        outputTokens: ['usage.output_tokens'],
      },
      { input: 3, output: 15, longContext: { above: 200_000, input: 6, output: 22.5 } },
      999_999,
    );
    // 150K input and 50K cache reads: 200K in all, not above the threshold.
    const at = { input_tokens: 150_000, cache_read_input_tokens: 50_000, output_tokens: 20 };
    expect(long({ usage: at })).toBe((150_000 + 5_000) * 3 + 20 * 15);
    // One more cached token: every token at the long-context prices, cache reads at their share of them.
    const past = { input_tokens: 150_000, cache_read_input_tokens: 50_001, output_tokens: 20 };
    expect(long({ usage: past })).toBe(Math.ceil((150_000 + 5_000.1) * 6 + 20 * 22.5));
    // Cache writes count; a breakdown of them (negative share) is not counted again.
    const split = (tokens: number) => ({ cache_creation_input_tokens: tokens, cache_creation: { ephemeral_5m_input_tokens: tokens } });
    expect(long({ usage: { input_tokens: 100_000, ...split(100_001), output_tokens: 0 } })).toBe(Math.ceil((100_000 + 100_001 * 1.25) * 6));
    expect(long({ usage: { input_tokens: 100_000, ...split(99_999), output_tokens: 0 } })).toBe(Math.ceil((100_000 + 99_999 * 1.25) * 3));
    // Input not reported: the bound is charged, and counted against the threshold.
    expect(long({ usage: { output_tokens: 1 } })).toBe(Math.ceil(999_999 * 6 + 22.5));
  });

  it('without output paths (embeddings) the input must be reported; it alone is charged', () => {
    const embed = pricedUsage({ inputTokens: ['usage.prompt_tokens'], extraInputTokens: [] }, { input: 2, output: 9 }, 500);
    expect(embed({ usage: { prompt_tokens: 7 } })).toBe(14);
    expect(embed({ usage: {} })).toBeNull();
  });
});

describe('sumAt: usage reported in parts', () => {
  it('adds the parts that are there (Gemini: visible output plus thinking)', () => {
    const read = sumAt(['usageMetadata.candidatesTokenCount', 'usageMetadata.thoughtsTokenCount']);
    expect(read({ usageMetadata: { candidatesTokenCount: 40, thoughtsTokenCount: 900 } })).toBe(940);
    expect(read({ usageMetadata: { candidatesTokenCount: 40 } })).toBe(40);
    expect(read({ usageMetadata: {} })).toBeNull();
  });
});
