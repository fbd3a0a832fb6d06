import { KeywardError } from '../errors';

/** A message's CRC32, its last 4 bytes: the only bytes let go early at a message's end (see `mayRelease`). */
const CRC_BYTES = 4;
/**
 * The largest message AWS's event-stream libraries accept (aws-c-event-stream's AWS_EVENT_STREAM_MAX_MESSAGE_SIZE,
 * 16 MiB): a message's total length therefore begins with byte 0x00 or 0x01, which no form of a secret holds.
 */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * Message boundaries of an AWS event stream (`application/vnd.amazon.eventstream`, what Bedrock's
 * ConverseStream and InvokeModelWithResponseStream answer): each message begins with its total length, a 4-byte
 * big-endian integer, and ends with a CRC32 (https://docs.aws.amazon.com/AmazonS3/latest/API/RESTSelectObjectAppendix.html).
 * The leak scrubber holds back a chunk's last bytes when they could begin a form of a secret; a message's CRC
 * sometimes does (about 1 message in 25 with an AWS key pair), which would delay that message until the next one.
 * At a message boundary the response stream lets go of what the scrubber holds when that is the CRC alone
 * (`mayRelease`), and checks, before anything of the next chunk goes out, that the next message begins with a
 * length no message exceeds, whose first byte no form of a secret holds. An upstream that only says it sends an
 * event stream, and puts a secret's first characters where a CRC would be, has its stream cut there: the client
 * never gets more than a CRC's 4 bytes of a form. Hand-written: 4 bytes of framing need no library.
 */
export class EventStreamBoundaries {
  /** Bytes of the current message still to come; 0 between messages. */
  private remaining = 0;
  /** The total-length prefix read so far (it may be split across chunks). */
  private prefix: number[] = [];
  /** Set on a length no message can have: boundaries are no longer known, so none is reported. */
  private lost = false;
  /** Held-back bytes were let go at the last boundary: the next byte must begin a message's length. */
  private released = false;

  /**
   * Follows `chunk` (the bytes as the scrubber sees them); true when it ends exactly where a message ends.
   * Throws `upstream_bad_response` when bytes were let go at the previous boundary and this chunk does not
   * begin a message: called before any of the chunk is handed on.
   */
  endsAtBoundary(chunk: Uint8Array): boolean {
    if (this.lost) return false;
    if (this.released && chunk.length > 0) {
      this.released = false;
      if (chunk[0]! > MAX_MESSAGE_BYTES >>> 24) {
        this.lost = true;
        throw new KeywardError('upstream_bad_response', {
          message: 'The upstream event stream broke its framing; the response was cut.',
        });
      }
    }
    let at = 0;
    while (at < chunk.length) {
      if (this.remaining === 0) {
        while (this.prefix.length < 4 && at < chunk.length) this.prefix.push(chunk[at++]!);
        if (this.prefix.length < 4) return false;
        const total = ((this.prefix[0]! << 24) | (this.prefix[1]! << 16) | (this.prefix[2]! << 8) | this.prefix[3]!) >>> 0;
        this.prefix = [];
        // Prelude (12 bytes) and message CRC (4): no message is shorter; none is longer than 16 MiB.
        if (total < 16 || total > MAX_MESSAGE_BYTES) {
          this.lost = true;
          return false;
        }
        this.remaining = total - 4;
      } else {
        const take = Math.min(this.remaining, chunk.length - at);
        this.remaining -= take;
        at += take;
      }
    }
    return this.remaining === 0 && this.prefix.length === 0;
  }

  /**
   * At a boundary (`endsAtBoundary` said so): whether the `held` bytes the scrubber holds back may go out now.
   * Only a message's CRC may; more than that holds bytes of the message's content, which stay held as in any
   * other body. When it says yes to bytes, the next chunk must begin a message (see `endsAtBoundary`).
   */
  mayRelease(held: number): boolean {
    if (held > CRC_BYTES) return false;
    this.released = held > 0;
    return true;
  }
}
