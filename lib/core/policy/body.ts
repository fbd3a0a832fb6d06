import type { z } from 'zod';
import { KeywardError } from '../errors';
import { readCappedBody, type CappedBody } from '../forward/body';
import { parseBody, violation, type CompiledContract } from './contract';
import { parseForm, serializeForm } from './form';
import { readMultipart } from './multipart';

/**
 * A route's body contract in its format (`bodyFormat`): the request's Content-Type must name that format (else
 * 415), the body is read and checked, and what is forwarded is re-serialised from the checked value, never the
 * client's bytes. JSON and form bodies are read whole (they are capped by maxRequestBytes); multipart bodies
 * stream (./multipart.ts).
 */
export interface ContractBody {
  /** The checked body, as caps, identity fields and budgets see it (parts.body). */
  readonly value: unknown;
  /** The body to forward, rebuilt from `value` once caps and identity fields were applied to it. */
  serialize(value: unknown): { body: AsyncIterable<Uint8Array> | Buffer; contentType: string };
  /**
   * Lets go of what is still being read (a multipart body's parser and the client's stream) when the call is
   * refused before the body is forwarded; a body read whole has nothing to let go of.
   */
  release?(): void;
}

/**
 * JSON.stringify of a checked value. A value nested deeper than the stack allows (tens of thousands of levels in
 * a field a contract leaves open, e.g. a preset's `z.unknown()`), which JSON.parse and the schema accept, throws
 * RangeError here: the client's doing, so 400, never a 500 with an error logged.
 */
function stringifyChecked(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch (error) {
    if (error instanceof RangeError) throw violation('body: nested too deeply');
    throw error;
  }
}

export async function readContractBody(
  contract: CompiledContract,
  contentType: string | null,
  body: CappedBody | null,
): Promise<ContractBody> {
  const schema = contract.body!;
  const type = mediaType(contentType);
  switch (contract.bodyFormat) {
    case 'json': {
      if (!isJson(type)) throw new KeywardError('unsupported_media_type');
      // A byte order mark is kept (JSON text has none: RFC 8259 §8.1), so it fails to parse as it always did.
      const value = parseBody(schema, utf8(body ? await readCappedBody(body) : Buffer.alloc(0), true));
      return {
        value,
        serialize: (checked) => ({
          body: Buffer.from(stringifyChecked(checked), 'utf8'),
          contentType: 'application/json',
        }),
      };
    }
    case 'form': {
      if (type !== 'application/x-www-form-urlencoded' || !isUtf8(contentType!)) {
        throw new KeywardError('unsupported_media_type', {
          message: 'This route accepts only a form body (Content-Type: application/x-www-form-urlencoded, UTF-8).',
        });
      }
      const value = parseForm(schema, utf8(body ? await readCappedBody(body) : Buffer.alloc(0)));
      return {
        value,
        serialize: (checked) => ({
          body: Buffer.from(serializeForm(checked, contract.formArrays, contract.writtenBody), 'utf8'),
          contentType: 'application/x-www-form-urlencoded',
        }),
      };
    }
    case 'multipart': {
      if (type !== 'multipart/form-data') {
        throw new KeywardError('unsupported_media_type', {
          message: 'This route accepts only a multipart body (Content-Type: multipart/form-data).',
        });
      }
      const identity = new Set(
        contract.identity
          .filter(([target]) => target.startsWith('body.'))
          .map(([target]) => target.slice('body.'.length)),
      );
      const reading = await readMultipart(
        { schema: schema as z.ZodType, parts: contract.parts!, identity, costFields: contract.costFields },
        contentType!,
        body?.iterable ?? noBody(),
      );
      return { value: reading.head, serialize: (checked) => reading.forward(checked), release: () => reading.cancel() };
    }
  }
}

async function* noBody(): AsyncGenerator<Uint8Array> {}

/** `type/subtype`, lower-case, without parameters. */
function mediaType(contentType: string | null): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}

function isJson(type: string): boolean {
  return type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json'));
}

/** A form's only parameter may be `charset=utf-8`: another charset would make the same bytes other text. */
function isUtf8(contentType: string): boolean {
  return /^[^;]*(?:;\s*charset\s*=\s*"?utf-8"?\s*)?$/i.test(contentType);
}

/**
 * The body as UTF-8 text; bytes that are not UTF-8 are refused rather than replaced with U+FFFD (which the
 * upstream would get in their place). `keepBom`: a leading byte order mark stays in the text.
 */
function utf8(bytes: Buffer, keepBom = false): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: keepBom }).decode(bytes);
  } catch {
    throw violation('body: not valid UTF-8');
  }
}
