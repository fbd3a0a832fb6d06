import { createParser } from 'eventsource-parser';
import type { ServerSentEvent } from './types';

/** The longest event (or line) read, in characters: 8 Mi, far above any model's streamed chunk. */
export const MAX_EVENT_CHARS = 8 * 1024 * 1024;

/**
 * Reads a `text/event-stream` body event by event with eventsource-parser (a maintained parser of the HTML
 * Standard's event stream format, §9.2.6), fed from the body's reader so it also works where `TextDecoderStream`
 * does not (React Native). No reconnection: a stream that ends, ends the loop.
 */
export async function* readEvents(response: Response): AsyncGenerator<ServerSentEvent, void, undefined> {
  const type = response.headers.get('content-type') ?? '';
  if (!/^text\/event-stream\b/i.test(type) || !response.body) {
    await response.body?.cancel().catch(() => {});
    throw new TypeError(`Expected a text/event-stream answer, got ${type.split(';')[0] || 'none'}.`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const ready: ServerSentEvent[] = [];
  let tooLong: Error | null = null;
  const parser = createParser({
    onEvent: (message) => ready.push({ event: message.event ?? 'message', data: message.data, id: message.id }),
    // A line, or an event's lines, longer than this never ends in memory: the stream is given up on instead.
    maxBufferSize: MAX_EVENT_CHARS,
    onError: (error) => {
      if (error.type === 'max-buffer-size-exceeded') tooLong ??= new TypeError(`An event of the stream is longer than ${MAX_EVENT_CHARS} characters.`);
    },
  });
  try {
    for (;;) {
      // An abort of the call's signal errors the body: this read then throws the signal's reason.
      const { done, value } = await reader.read();
      // A final event without its blank line is dropped, as EventSource does (HTML Standard §9.2.6).
      parser.feed(done ? decoder.decode() : decoder.decode(value, { stream: true }));
      while (ready.length > 0) yield ready.shift()!;
      if (tooLong) throw tooLong;
      if (done) return;
    }
  } finally {
    // Reached when the stream ended, failed, or the consumer left the loop (`break` calls `return()` here):
    // cancelling closes the connection, and Keyward then cancels the upstream call.
    await reader.cancel().catch(() => {});
  }
}
