import { z } from 'zod';
import { credentialSourceSchema, hmacAuthSchema } from '../config/schema';
import { commonPresetOptions, definePreset, presetFunction } from './preset';

/**
 * An in-house API that verifies an HMAC request signature (README "Request signing": the canonical string it
 * rebuilds). The preset is the signature only: `baseUrl` and `routes` are yours, as upstream fields beside the
 * options, e.g. `{"preset": "hmac", "secret": {"env": "BILLING_HMAC_KEY"}, "baseUrl": "https://billing.internal/v1/",
 * "routes": [{"method": "POST", "path": "/invoices"}]}`.
 */

const options = z.strictObject({
  ...commonPresetOptions,
  // No default variable: a shared key names its API.
  secret: credentialSourceSchema.describe('The shared key: {"env": "NAME"}, {"user": "key"} or {"claim", "keys"}.'),
  ...hmacAuthSchema.omit({ type: true, secret: true }).shape,
});

export const hmacPreset = definePreset({
  name: 'hmac',
  options,
  build: ({ secret, algorithm, encoding, header, prefix, timestampHeader, keyId, keyIdHeader }) => ({
    // No default: the `baseUrl` given beside the options replaces this; left out, start-up stops naming
    // upstreams.<id>.baseUrl.
    baseUrl: '',
    auth: { type: 'hmac', secret, algorithm, encoding, header, prefix, timestampHeader, keyId, keyIdHeader },
    routes: [],
  }),
});

/** `hmac({ id: 'billing', secret: { env: 'BILLING_HMAC_KEY' }, baseUrl: 'https://billing.internal/v1/', routes: […] })`. */
export const hmac = presetFunction(hmacPreset);
