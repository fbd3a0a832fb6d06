import ipaddr from 'ipaddr.js';

/**
 * The caller's IP address for per-IP limits and the audit trail. Route handlers cannot see the socket, so
 * it comes from `X-Forwarded-For`: Next sets it to the socket's address when absent, and each trusted proxy
 * appends the address it saw. With `hops` trusted proxies, the address `hops` from the right is the first
 * one no client could have chosen (MDN "X-Forwarded-For: Selecting an IP address"). Null when absent or
 * when that entry is not an address: a request without a usable address is not attributed to anyone's.
 */
export function clientIp(headers: Headers, hops: number): string | null {
  const header = headers.get('x-forwarded-for');
  if (!header) return null;
  const entries = header.split(',').map((entry) => entry.trim()).filter(Boolean);
  const candidate = entries[Math.max(entries.length - hops, 0)];
  return candidate === undefined ? null : normalizeIp(candidate);
}

/**
 * One spelling per address, so one client is one counter: an IPv4-mapped IPv6 address (`::ffff:10.60.0.1`,
 * how a dual-stack socket reports an IPv4 peer) becomes its IPv4 address, and IPv6 takes its canonical
 * compressed form (RFC 5952: `2001:DB8:0::1` → `2001:db8::1`). Parsed by ipaddr.js; anything else is null
 * and never becomes part of a key: IPv4 only as four decimal parts (not `1`, `0x7f.1` or `010.1.1.1`, which
 * parsers read differently), no zone index (`fe80::1%eth0`). A port some proxies append is dropped
 * (`203.0.113.7:51234`, `[2001:db8::1]:443`).
 */
export function normalizeIp(value: string): string | null {
  // No address is written longer ("[" + 45 characters of IPv6 + "]:" + a port is 53): refused before the cache,
  // which then holds short keys only, whatever a client puts in X-Forwarded-For.
  if (value.length > MAX_ADDRESS_TEXT) return null;
  let normal = normalized.get(value);
  if (normal === undefined) {
    normal = parseIp(value);
    // Clients come back: each spelling is parsed once (cleared when full, a plain bound on memory).
    if (normalized.size >= NORMALIZED_SIZE) normalized.clear();
    normalized.set(value, normal);
  }
  return normal;
}

const normalized = new Map<string, string | null>();
const NORMALIZED_SIZE = 10_000;
const MAX_ADDRESS_TEXT = 64;

function parseIp(value: string): string | null {
  let address = value;
  const bracketed = /^\[([^\]]*)\]:\d{1,5}$/.exec(value);
  if (bracketed) address = bracketed[1]!;
  else if (/^[^:]*:\d{1,5}$/.test(value)) address = value.slice(0, value.lastIndexOf(':'));
  if (ipaddr.IPv4.isValidFourPartDecimal(address)) return ipaddr.IPv4.parse(address).toString();
  if (!ipaddr.IPv6.isValid(address) || address.includes('%')) return null;
  // process(): IPv4-mapped → IPv4; any other IPv6 → toString(), the RFC 5952 form.
  return ipaddr.process(address).toString();
}

/**
 * The site an IPv6 address belongs to, its /48 (`2001:db8:1::/48`): what one customer or one cloud account is
 * commonly given, 65,536 /64s. Null for IPv4 (an address is already scarce). Sign-in counts it as well as the
 * /64, so one site cannot multiply its attempts by its /64s.
 */
export function siteBucket(ip: string): string | null {
  return ipv6Prefix(ip, 48);
}

/**
 * The bucket per-IP limits count an address in (a normalised address, as `clientIp` returns): an IPv4 address
 * itself, an IPv6 address's /64 (`2001:db8:1:2::/64`). One host, at home or in a cloud, holds a whole /64: counted
 * per address, it would have 2^64 buckets, and spraying one password over many usernames would meet no limit.
 */
export function limitBucket(ip: string): string {
  return ipv6Prefix(ip, 64) ?? ip;
}

/** An IPv6 address's network of `bits` (a multiple of 16) as `2001:db8:1::/48`; null for anything else. */
function ipv6Prefix(ip: string, bits: 48 | 64): string | null {
  if (!ip.includes(':') || !ipaddr.IPv6.isValid(ip)) return null;
  const parts = ipaddr.IPv6.parse(ip).parts.map((part, index) => (index < bits / 16 ? part : 0));
  return `${new ipaddr.IPv6(parts).toString()}/${bits}`;
}
