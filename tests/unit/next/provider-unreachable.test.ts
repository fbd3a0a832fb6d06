import { describe, expect, it } from 'vitest';
import { isNetworkFailure } from '../../../lib/next/auth';

/**
 * Which errors Auth.js logs make the sign-in page say "the sign-in provider cannot be reached, try again later"
 * (`?error=ProviderUnreachable`) rather than "not configured correctly": a connection that could not be made, found
 * down fetch's causes; never a connection reset mid-exchange, which `http://` to a TLS port also looks like.
 */
const fetchFailed = (cause: unknown) => Object.assign(new TypeError('fetch failed'), { cause });
const coded = (code: string) => Object.assign(new Error(code), { code });

describe('isNetworkFailure', () => {
  it.each(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT'])('%s down the causes: unreachable', (code) => {
    expect(isNetworkFailure({ name: 'OperationProcessingError', cause: { err: fetchFailed(coded(code)) } })).toBe(true);
    expect(isNetworkFailure(fetchFailed(new AggregateError([coded(code)])))).toBe(true);
  });

  it.each(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET'])('%s (a connection lost mid-exchange, as http:// to a TLS port): not said as unreachable', (code) => {
    expect(isNetworkFailure(fetchFailed(coded(code)))).toBe(false);
  });

  it('an error with no network cause (a provider answering 400, a bad client secret) is not unreachable', () => {
    expect(isNetworkFailure(new Error('invalid_client'))).toBe(false);
    expect(isNetworkFailure({ cause: { err: new TypeError('Unexpected token < in JSON') } })).toBe(false);
  });
});
