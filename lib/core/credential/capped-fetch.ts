/**
 * Any answer from an OAuth or OpenID Connect server (discovery documents, token and revocation answers, GitHub's
 * and Slack's APIs): far more than any of them is, and read no further. Without a bound, an answer without end
 * would be held in memory for as long as the request's timeout lets it flow (gigabytes on a fast link).
 */
export const MAX_PROVIDER_RESPONSE_BYTES = 1024 * 1024;

/**
 * `fetch`, with every answer's body cut past `maxBytes`: reading further fails (whoever reads it, oauth4webapi
 * included), and the connection is let go.
 */
export function cappedFetch(inner: typeof fetch, maxBytes = MAX_PROVIDER_RESPONSE_BYTES): typeof fetch {
  return async (input, init) => {
    const response = await inner(input, init);
    if (!response.body) return response;
    let size = 0;
    const body = response.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          size += chunk.byteLength;
          if (size > maxBytes) controller.error(new Error('the server answered with too large a body'));
          else controller.enqueue(chunk);
        },
      }),
    );
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}
