import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';

/**
 * Writes the core's `Response` to the client as it streams: status and headers (each `Set-Cookie` as its own
 * line), then every chunk as soon as the core hands it over (SSE events are not held back), waiting for
 * 'drain' whenever the socket's buffer is full, so a slow client slows the upstream read instead of filling
 * memory. When the client goes away, the body is cancelled, which the core records as `aborted` and which
 * closes the upstream response. A body that fails mid-way destroys the connection, so the client sees a
 * truncated response, never a complete-looking one.
 */
export async function writeResponse(response: Response, res: ServerResponse, extraHeaders: readonly (readonly [string, string])[] = []): Promise<void> {
  const headers: OutgoingHttpHeaders = {};
  for (const [name, value] of extraHeaders) headers[name] = value;
  for (const [name, value] of response.headers) {
    if (name !== 'set-cookie') headers[name] = value;
  }
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) headers['set-cookie'] = cookies;
  res.writeHead(response.status, headers);

  const body = response.body;
  if (body === null) {
    res.end();
    return;
  }
  const reader = body.getReader();
  const cancel = () => {
    if (!res.writableFinished) reader.cancel().catch(() => {});
  };
  res.once('close', cancel);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (res.destroyed) return;
      if (!res.write(value)) await drained(res);
    }
    if (!res.destroyed) res.end();
  } catch {
    res.destroy();
  } finally {
    res.off('close', cancel);
  }
}

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
