import { describe, expect, it } from 'vitest';
import { clientIp, normalizeIp } from '../../../lib/core/client/ip';

const xff = (value: string) => new Headers({ 'x-forwarded-for': value });

describe('clientIp', () => {
  it('is null without X-Forwarded-For', () => {
    expect(clientIp(new Headers(), 1)).toBeNull();
    expect(clientIp(new Headers({ 'x-real-ip': '203.0.113.7', forwarded: 'for=203.0.113.7' }), 1)).toBeNull();
    expect(clientIp(xff(''), 1)).toBeNull();
    expect(clientIp(xff(' , ,'), 1)).toBeNull();
  });

  it('with one trusted proxy, takes the right-most entry (the one the proxy appended)', () => {
    expect(clientIp(xff('203.0.113.7'), 1)).toBe('203.0.113.7');
    expect(clientIp(xff('198.51.100.1, 203.0.113.7'), 1)).toBe('203.0.113.7');
    expect(clientIp(xff('1.1.1.1,2.2.2.2,  203.0.113.7  '), 1)).toBe('203.0.113.7');
  });

  it('with two trusted proxies, takes the second entry from the right', () => {
    expect(clientIp(xff('198.51.100.1, 203.0.113.7, 10.0.0.2'), 2)).toBe('203.0.113.7');
    expect(clientIp(xff('203.0.113.7, 10.0.0.2'), 2)).toBe('203.0.113.7');
  });

  it('drops a port some proxies append, so one client is one counter', () => {
    expect(clientIp(xff('203.0.113.7:51234'), 1)).toBe('203.0.113.7');
    expect(clientIp(xff('[2001:db8::1]:443'), 1)).toBe('2001:db8::1');
    expect(clientIp(xff('2001:db8::1'), 1)).toBe('2001:db8::1');
    expect(clientIp(xff('203.0.113.7:99999999'), 1)).toBeNull();
    expect(clientIp(xff('cafe'), 1)).toBeNull();
  });

  it('cannot be chosen by a client that prepends its own entries', () => {
    // The client sent "X-Forwarded-For: 6.6.6.6"; the proxy appended the real address.
    expect(clientIp(xff('6.6.6.6, 203.0.113.7'), 1)).toBe('203.0.113.7');
    expect(clientIp(xff('6.6.6.6, 7.7.7.7, 203.0.113.7, 10.0.0.2'), 2)).toBe('203.0.113.7');
  });

  it('takes the left-most entry when there are fewer entries than hops', () => {
    expect(clientIp(xff('203.0.113.7'), 2)).toBe('203.0.113.7');
    expect(clientIp(xff('203.0.113.7, 10.0.0.2'), 5)).toBe('203.0.113.7');
  });

  it('returns IPv6 literals', () => {
    expect(clientIp(xff('2001:db8::1'), 1)).toBe('2001:db8::1');
    expect(clientIp(xff('::1'), 1)).toBe('::1');
  });

  it('reads an IPv4-mapped IPv6 address as the IPv4 address it is (one client, one counter)', () => {
    expect(clientIp(xff('::ffff:10.60.0.1'), 1)).toBe('10.60.0.1');
    expect(clientIp(xff('::FFFF:10.60.0.1'), 1)).toBe('10.60.0.1');
    expect(clientIp(xff('0:0:0:0:0:ffff:0a3c:0001'), 1)).toBe('10.60.0.1');
    expect(clientIp(xff('[::ffff:10.60.0.1]:443'), 1)).toBe('10.60.0.1');
    expect(clientIp(xff('203.0.113.7, ::ffff:192.0.2.128'), 1)).toBe('192.0.2.128');
  });

  it('writes IPv6 in its canonical compressed form (RFC 5952), whatever the spelling', () => {
    for (const spelling of ['2001:DB8::1', '2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8:0:0::1', '[2001:Db8::0:1]:8443']) {
      expect(clientIp(xff(spelling), 1)).toBe('2001:db8::1');
    }
    expect(clientIp(xff('2001:db8:0:0:1:0:0:1'), 1)).toBe('2001:db8::1:0:0:1');
    expect(normalizeIp('0:0:0:0:0:0:0:1')).toBe('::1');
  });

  it('gives the same answer the second time (each spelling is parsed once), and the longest spellings still parse', () => {
    for (let round = 0; round < 2; round++) {
      expect(normalizeIp('[0000:0000:0000:0000:0000:ffff:255.255.255.255]:65535')).toBe('255.255.255.255');
      expect(normalizeIp('[2001:0db8:0000:0000:0000:0000:0000:0001]:65535')).toBe('2001:db8::1');
      expect(normalizeIp('not an address')).toBeNull();
    }
    // Longer than any address can be written: refused without being parsed or kept.
    expect(normalizeIp(`2001:db8::1${' '.repeat(100)}`)).toBeNull();
    expect(normalizeIp('1'.repeat(10_000))).toBeNull();
  });

  it('reads several X-Forwarded-For lines as one list', () => {
    const headers = new Headers();
    headers.append('x-forwarded-for', '6.6.6.6');
    headers.append('x-forwarded-for', '203.0.113.7');
    expect(clientIp(headers, 1)).toBe('203.0.113.7');
  });

  it.each([
    'unknown',
    'evil.example.com',
    '<script>',
    '203.0.113.7 rm',
    '203.0.113.7/24',
    '[2001:db8::1]',
    'fe80::1%eth0',
    '1',
    'x'.repeat(100),
    '1'.repeat(46),
    '203.0.113.7;',
    // Forms that other parsers read as another address (octal, hex, shortened IPv4).
    '0x7f.1',
    '010.1.1.1',
    '127.1',
    '2130706433',
    '::ffff:1.2.3',
    '1::2::3',
  ])('is null for the garbage entry %j (nothing else becomes part of a key)', (entry) => {
    expect(clientIp(xff(`198.51.100.1, ${entry}`), 1)).toBeNull();
  });

  it('is null when the chosen entry is garbage, even if another entry is an address', () => {
    expect(clientIp(xff('203.0.113.7, not-an-ip, 10.0.0.2'), 2)).toBeNull();
  });
});
