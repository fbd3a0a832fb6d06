import { randomBytes, randomInt } from 'node:crypto';
import { crc32 } from 'node:zlib';

/**
 * Decoy credentials (honeytokens): values shaped like real keys of a provider, to plant where attackers look
 * (a bundle variable, `.env.example`, a mobile config). They are random (node:crypto) and fake by
 * construction: no provider ever issued them, so they open nothing anywhere; Keyward recognises them when
 * they come back (lib/core/detect/decoys.ts). Each shape follows the provider's published or observed format
 * (prefix, length, alphabet), so a secret scanner's pattern for that provider matches it, as it would a real key.
 */
export const DECOY_SHAPES = ['openai', 'anthropic', 'stripe', 'github', 'google', 'aws', 'generic'] as const;
export type DecoyShape = (typeof DECOY_SHAPES)[number];

export interface MintedDecoy {
  readonly shape: DecoyShape;
  /** What is planted: the key (for `aws`, the access key id). */
  readonly value: string;
  /** `aws` only: the secret access key that goes with `value` (planted next to it). */
  readonly secret?: string;
}

const DIGITS = '0123456789';
const UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const ALPHANUMERIC = DIGITS + UPPER + LOWER;
const BASE64URL = `${UPPER}${LOWER}${DIGITS}-_`;
/** AWS access key ids are base32 (RFC 4648 §6): A–Z and 2–7. */
const BASE32 = `${UPPER}234567`;
const BASE64 = `${UPPER}${LOWER}${DIGITS}+/`;

/** `length` characters drawn uniformly from `alphabet` (randomInt rejects the modulo bias). */
function randomText(alphabet: string, length: number): string {
  let text = '';
  for (let i = 0; i < length; i++) text += alphabet[randomInt(alphabet.length)];
  return text;
}

/**
 * A GitHub token's last 6 characters are the CRC32 of the 30 random ones in base62, so a scanner (or GitHub
 * itself) can tell a well-formed token from a typo offline. A decoy that failed that check would be dismissed.
 * https://github.blog/engineering/platform-security/behind-githubs-new-authentication-token-formats/
 */
function githubToken(prefix: string): string {
  const random = randomText(ALPHANUMERIC, 30);
  let checksum = crc32(random);
  let encoded = '';
  do {
    encoded = ALPHANUMERIC[checksum % 62] + encoded;
    checksum = Math.floor(checksum / 62);
  } while (checksum > 0);
  return `${prefix}${random}${encoded.padStart(6, '0')}`;
}

/** Mints one decoy of the given shape. */
export function mintDecoy(shape: DecoyShape): MintedDecoy {
  switch (shape) {
    case 'openai':
      // Project keys: sk-proj-, 74 characters, "T3BlbkFJ" (base64 of "OpenAI"), 74 more: 164 in all.
      return { shape, value: `sk-proj-${randomText(BASE64URL, 74)}T3BlbkFJ${randomText(BASE64URL, 74)}` };
    case 'anthropic':
      // sk-ant-api03-, 93 characters, "AA": 108 in all.
      return { shape, value: `sk-ant-api03-${randomText(BASE64URL, 93)}AA` };
    case 'stripe':
      // Live secret keys: sk_live_51 and 97 letters and digits: 107 in all.
      return { shape, value: `sk_live_51${randomText(ALPHANUMERIC, 97)}` };
    case 'github':
      // Classic personal access tokens: ghp_, 30 random base62 characters and their 6-character checksum.
      return { shape, value: githubToken('ghp_') };
    case 'google':
      // API keys: AIza and 35 characters: 39 in all.
      return { shape, value: `AIza${randomText(BASE64URL, 35)}` };
    case 'aws':
      // A long-term access key id (AKIA and 16 base32 characters) and its 40-character secret access key.
      return { shape, value: `AKIA${randomText(BASE32, 16)}`, secret: randomText(BASE64, 40) };
    case 'generic':
      // No provider's format: 40 letters and digits, like many API keys and tokens.
      return { shape, value: randomText(ALPHANUMERIC, 40) };
  }
}

/** A decoy's id: names it in the decoys file, logs, alerts and the audit trail (never its value). */
export function decoyId(): string {
  return `decoy_${randomBytes(6).toString('hex')}`;
}
