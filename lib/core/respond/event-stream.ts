/**
 * Message boundaries of an AWS event stream (`application/vnd.amazon.eventstream`, what Bedrock's
 * ConverseStream and InvokeModelWithResponseStream answer): each message begins with its total length, a 4-byte
 * big-endian integer, and ends with a CRC32 (https://docs.aws.amazon.com/AmazonS3/latest/API/RESTSelectObjectAppendix.html).
 * The leak scrubber holds back a chunk's last bytes when they could begin a form of a secret; a message's CRC
 * sometimes does (about 1 message in 25 with an AWS key pair), which would delay that message until the next one.
 * At a message boundary nothing can continue a form (the next message starts with binary framing), so the
 * response stream releases what the scrubber holds there. Hand-written: 4 bytes of framing need no library.
 */
export class EventStreamBoundaries {
  /** Bytes of the current message still to come; 0 between messages. */
  private remaining = 0;
  /** The total-length prefix read so far (it may be split across chunks). */
  private prefix: number[] = [];
  /** Set on a length no message can have: boundaries are no longer known, so none is reported. */
  private lost = false;

  /** Follows `chunk` (the bytes as the scrubber sees them); true when it ends exactly where a message ends. */
  endsAtBoundary(chunk: Uint8Array): boolean {
    if (this.lost) return false;
    let at = 0;
    while (at < chunk.length) {
      if (this.remaining === 0) {
        while (this.prefix.length < 4 && at < chunk.length) this.prefix.push(chunk[at++]!);
        if (this.prefix.length < 4) return false;
        const total = ((this.prefix[0]! << 24) | (this.prefix[1]! << 16) | (this.prefix[2]! << 8) | this.prefix[3]!) >>> 0;
        this.prefix = [];
        // Prelude (12 bytes) and message CRC (4): no message is shorter.
        if (total < 16) {
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
}
