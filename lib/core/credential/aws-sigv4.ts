import 'server-only';
import { Hash } from '@smithy/hash-node';
import { SignatureV4 } from '@smithy/signature-v4';
import { AWS_SIGNATURE_HEADERS, S3_SIGNING_NAMES, type AuthConfig } from '../config/schema';
import { KeywardError } from '../errors';
import { hasQueryParam } from '../forward/query';
import type { KeyFingerprints } from '../keys/fingerprint';
import type { ResolvedCredential } from '../upstream/registry';
import type { RequestSigner, SignableRequest } from './sign';

/**
 * AWS Signature Version 4 with AWS's own signer (@smithy/signature-v4, what the AWS SDK for JavaScript uses) and
 * node:crypto's SHA-256 (@smithy/hash-node): no signing code of Keyward's own. What Keyward does here is make the
 * request it sends and the request it signs the same one (SigV4: https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html).
 */

type AwsAuth = Extract<AuthConfig, { type: 'aws-sigv4' }>;

export interface AwsKeyPair {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

/**
 * Query parameters of SigV4 query authentication (presigned URLs). A client's own would make AWS refuse the call
 * ("only one auth mechanism allowed") or let it present someone else's signature: refused like a query credential.
 */
const PRESIGN_PARAMS = [
  'X-Amz-Algorithm',
  'X-Amz-Credential',
  'X-Amz-Date',
  'X-Amz-Expires',
  'X-Amz-SignedHeaders',
  'X-Amz-Signature',
  'X-Amz-Security-Token',
];

/**
 * The credential of an `aws-sigv4` upstream. `secrets` holds the secret access key first (key rings and
 * verifiers read `secrets[0]`), then the access key id, which AWS repeats in error messages ("The security token
 * included in the request is invalid", "…Credential=AKIA…"), then the session token: all three are scrubbed.
 */
export function awsCredential(auth: AwsAuth, key: AwsKeyPair, fingerprints: KeyFingerprints): ResolvedCredential {
  const secrets = [key.secretAccessKey, key.accessKeyId, ...(key.sessionToken === undefined ? [] : [key.sessionToken])];
  return {
    type: 'aws-sigv4',
    signer: awsSigner(auth, key),
    secrets,
    fingerprint: fingerprints.of(key.secretAccessKey),
  };
}

function awsSigner(auth: AwsAuth, key: AwsKeyPair): RequestSigner {
  const s3 = S3_SIGNING_NAMES.has(auth.service);
  const signer = new SignatureV4({
    service: auth.service,
    region: auth.region,
    credentials: { accessKeyId: key.accessKeyId, secretAccessKey: key.secretAccessKey, sessionToken: key.sessionToken },
    sha256: Hash.bind(null, 'sha256'),
    // Canonical URI: every service but S3 URI-encodes the path it received once more (so the SDKs' `%3A` in a
    // Bedrock model id is signed as `%253A`); S3 signs its decoded path encoded once, which `s3Path` sends.
    uriEscapePath: !s3,
    // X-Amz-Content-Sha256 on every call: S3 requires it, other services ignore it.
    applyChecksum: true,
  });
  return {
    // A streamed body is read whole (under the route's cap) unless S3 may take it unsigned: every other service
    // recomputes the body's hash, so UNSIGNED-PAYLOAD would fail there (schema: `payload`).
    streamedBody: auth.payload === 'unsigned' ? 'unsigned' : 'buffer',
    sign: (request) => signAws(signer, s3, request),
  };
}

async function signAws(
  signer: SignatureV4,
  s3: boolean,
  { method, url, headers, body }: SignableRequest,
): Promise<void> {
  if (PRESIGN_PARAMS.some((name) => hasQueryParam(url.searchParams, name))) {
    throw new KeywardError('bad_request', {
      message: 'The request sets a query parameter reserved for the request signature.',
    });
  }
  if (s3) url.pathname = s3Path(url.pathname);
  // AWS reads the query decoded and signs it re-encoded (RFC 3986 unreserved characters kept): sent in that encoding,
  // a space is "%20", never a "+" that AWS would read as a plus sign.
  const query = rfc3986Query(url.searchParams);
  url.search = query;
  // Whatever else set these (a fixed header, a future pass-through), the signer's own are the only ones sent.
  for (const name of AWS_SIGNATURE_HEADERS) delete headers[name];
  // The Host header undici would write (`host[:port]`, default port omitted): signed, so written here.
  headers.host = url.host;
  if (Buffer.isBuffer(body)) headers['content-length'] = String(body.byteLength);
  if (body === 'streamed') headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
  const signed = await signer.sign({
    method,
    protocol: url.protocol,
    hostname: url.hostname,
    port: url.port === '' ? undefined : Number(url.port),
    path: url.pathname,
    query: queryRecord(url.searchParams),
    headers: { ...headers },
    body: Buffer.isBuffer(body) ? body : undefined,
  });
  // The signed request's headers are the ones sent (the signer drops a `date` it did not sign, adds its own).
  for (const name of Object.keys(headers)) if (!Object.hasOwn(signed.headers, name)) delete headers[name];
  Object.assign(headers, signed.headers);
}

/** RFC 3986 §2.3: everything but unreserved characters percent-encoded, as SigV4's canonical form writes it. */
function rfc3986(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function rfc3986Query(params: URLSearchParams): string {
  const pairs = [...params].map(([name, value]) => `${rfc3986(name)}=${rfc3986(value)}`);
  return pairs.length === 0 ? '' : `?${pairs.join('&')}`;
}

/** The query as the signer takes it: decoded names to a value, or to every value of a repeated name. */
function queryRecord(params: URLSearchParams): Record<string, string | string[]> {
  const record: Record<string, string | string[]> = Object.create(null);
  for (const name of new Set(params.keys())) {
    const values = params.getAll(name);
    record[name] = values.length === 1 ? values[0]! : values;
  }
  return record;
}

/** S3 decodes the path and signs it re-encoded: each segment is sent in exactly that encoding. */
function s3Path(pathname: string): string {
  return pathname
    .split('/')
    .map((segment) => {
      try {
        return rfc3986(decodeURIComponent(segment));
      } catch {
        throw new KeywardError('bad_path');
      }
    })
    .join('/');
}
