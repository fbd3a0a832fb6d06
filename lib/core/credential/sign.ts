import 'server-only';

/**
 * Request signatures (`aws-sigv4`, `hmac`): the credential is not a value attached to the call but a signature
 * over it, so it is computed last, over exactly what is sent (pipeline step 13, before `forward`).
 */

/** The body as a signer sees it: whole, absent, or streamed as it arrives (never read by the signer). */
export type SignedBody = Buffer | null | 'streamed';

/** The request as it will be sent. A signer adds its headers and may rewrite path and query into its canonical encoding. */
export interface SignableRequest {
  /** Upper case, as sent. */
  readonly method: string;
  readonly url: URL;
  readonly headers: Record<string, string>;
  readonly body: SignedBody;
}

export interface RequestSigner {
  /**
   * What a streamed body needs: `buffer`, read whole first (under the route's byte cap, enforced by the stream
   * itself) so that its hash is signed; `unsigned`, sent as it arrives and signed as an unsigned payload (S3).
   */
  readonly streamedBody: 'buffer' | 'unsigned';
  sign(request: SignableRequest): Promise<void>;
}

export interface OutgoingCall {
  readonly method: string;
  readonly url: URL;
  readonly headers: Record<string, string>;
  readonly body: AsyncIterable<Uint8Array> | Buffer | null;
  /** The client's Content-Length, if it declared one. */
  readonly declaredLength: string | null;
}

/** Signs the call and returns the body to send (a streamed body the signature must cover is now whole). */
export async function signRequest(
  signer: RequestSigner,
  call: OutgoingCall,
): Promise<AsyncIterable<Uint8Array> | Buffer | null> {
  const { method, url, headers, body } = call;
  if (body === null || Buffer.isBuffer(body)) {
    await signer.sign({ method, url, headers, body });
    return body;
  }
  // An unsigned payload streams through; S3 needs its length up front (411 without it), so the client's declared
  // length goes with it, and undici refuses to send a body of any other length (RequestContentLengthMismatchError).
  // Without one (a chunked upload, a multipart body rebuilt from its contract), it is read whole like a signed one.
  const declared = call.declaredLength !== null && /^\d{1,16}$/.test(call.declaredLength) ? String(Number(call.declaredLength)) : null;
  if (signer.streamedBody === 'buffer' || declared === null) {
    const whole = await readWhole(body);
    await signer.sign({ method, url, headers, body: whole });
    return whole;
  }
  headers['content-length'] = declared;
  await signer.sign({ method, url, headers, body: 'streamed' });
  return body;
}

/** Reads a streamed body whole; its source (lib/core/forward/body.ts) stops it at the route's byte cap with 413. */
async function readWhole(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of body) chunks.push(chunk);
  return Buffer.concat(chunks);
}
