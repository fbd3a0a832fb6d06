import { isIP } from 'node:net';

/**
 * The caller's IP address for per-IP limits and the audit trail. Route handlers cannot see the socket, so
 * it comes from `X-Forwarded-For`: Next sets it to the socket's address when absent, and each trusted proxy
 * appends the address it saw. With `hops` trusted proxies, the address `hops` from the right is the first
 * one no client could have chosen (MDN "X-Forwarded-For: Selecting an IP address"). Null when absent.
 */
export function clientIp(headers: Headers, hops: number): string | null {
  const header = headers.get('x-forwarded-for');
  if (!header) return null;
  const entries = header.split(',').map((entry) => entry.trim()).filter(Boolean);
  let candidate = entries[Math.max(entries.length - hops, 0)] ?? '';
  // Some proxies append the port (`203.0.113.7:51234`, `[2001:db8::1]:443`): the address alone is the client.
  const withPort = /^(?:\[([0-9A-Fa-f:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):\d{1,5}$/.exec(candidate);
  if (withPort) candidate = withPort[1] ?? withPort[2]!;
  // An IPv4 or IPv6 literal only: anything else is not an address and must not become part of a key.
  return /^[0-9A-Fa-f:.]+$/.test(candidate) && isIP(candidate) !== 0 ? candidate : null;
}
