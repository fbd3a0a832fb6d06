import { describe, expect, it } from 'vitest';
import { injectCredential } from '../../../lib/core/credential/inject';
import { filterRequestHeaders } from '../../../lib/core/forward/headers';
import { processFingerprints } from '../../../lib/core/keys/fingerprint';
import type { ResolvedCredential } from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { expectKeywardError, thrown } from '../support';

const fingerprint = (value: string) => processFingerprints().of(value);

function headerCredential(secret: string): ResolvedCredential {
  return { type: 'header', headerName: 'x-api-key', headerValue: secret, secrets: [secret], fingerprint: fingerprint(secret) };
}

describe('injectCredential', () => {
  it('sets the credential header, replacing anything the client tried', () => {
    const secret = randomSecret();
    const clientValue = randomSecret('client');
    const headers = filterRequestHeaders(new Headers({ 'x-api-key': clientValue, accept: '*/*' }), new Set());
    headers['x-api-key'] = clientValue; // even if it had slipped through the filter
    injectCredential(headerCredential(secret), headers, new URL('https://api.example.com/v1/items'));
    expect(headers['x-api-key']).toBe(secret);
  });

  it('appends a query credential', () => {
    const secret = randomSecret();
    const url = new URL('https://api.example.com/v1/items?a=1');
    injectCredential(
      { type: 'query', queryName: 'api_key', queryValue: secret, secrets: [secret], fingerprint: fingerprint(secret) },
      {},
      url,
    );
    expect(url.searchParams.getAll('api_key')).toEqual([secret]);
    expect(url.searchParams.get('a')).toBe('1');
  });

  it('refuses a client query parameter with the credential name', () => {
    const secret = randomSecret();
    const url = new URL('https://api.example.com/v1/items?api_key=mine');
    const error = expectKeywardError(
      thrown(() =>
        injectCredential(
          { type: 'query', queryName: 'api_key', queryValue: secret, secrets: [secret], fingerprint: fingerprint(secret) },
          {},
          url,
        ),
      ),
      'bad_request',
    );
    expect(error.message).not.toContain(secret);
    expect(url.href).not.toContain(secret);
  });
});
