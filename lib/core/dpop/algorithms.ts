/**
 * The JWS algorithms a DPoP proof may be signed with (RFC 9449 §4.3 check 5: asymmetric only, never `none` or a
 * MAC such as HS256, whose "public" key would be the secret). Published as `dpop_signing_alg_values_supported`
 * (RFC 8414 metadata) and in the `algs` of a DPoP challenge. jose refuses RSA keys under 2048 bits.
 */
export const DPOP_ALGORITHMS = [
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
  'PS256',
  'PS384',
  'PS512',
  'RS256',
  'RS384',
  'RS512',
] as const;
