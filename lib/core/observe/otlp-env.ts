import { isLoopbackHost } from '../config/schema';
import { MIN_SECRET_LENGTH } from '../upstream/registry';

type Env = Readonly<Record<string, string | undefined>>;

/** The OTLP exporter's header variables (https://opentelemetry.io/docs/specs/otel/protocol/exporter/). */
const HEADER_VARIABLES = ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS'] as const;

/**
 * Header names that carry a collector's credential: `authorization`, and the vendors' own (`x-honeycomb-team`,
 * `dd-api-key`, `api-key`, `lightstep-access-token`, `signoz-ingestion-key`, `uptrace-dsn`, …). Other headers
 * (`x-honeycomb-dataset=keyward-traces`, `x-scope-orgid=production`) name things that are no secret, and words a
 * log line may well hold.
 */
const CREDENTIAL_HEADER = /auth|key|token|secret|pass|cred|team|dsn|sig/i;

/**
 * The header values the OTLP exporter sends to the collector under a credential's name (CREDENTIAL_HEADER): an
 * API key, a `Basic …` or `Bearer …` credential. Each as written, as sent (percent-decoded, as the SDK reads
 * `key=value,…`: W3C Baggage's format, `;` starting a value's properties), and the credential alone after an
 * authorization scheme. For the log scrubber: those of 8 characters or more, since scrubbing a short one would
 * cut ordinary words out of log lines.
 */
export function otlpHeaderSecrets(env: Env): string[] {
  const values: string[] = [];
  for (const name of HEADER_VARIABLES) {
    for (const entry of (env[name] ?? '').split(',')) {
      const pair = entry.split(';', 1)[0]!;
      const at = pair.indexOf('=');
      const raw = at > 0 ? pair.slice(at + 1).trim() : '';
      if (!raw || !CREDENTIAL_HEADER.test(pair.slice(0, at))) continue;
      values.push(raw);
      let sent: string;
      try {
        sent = decodeURIComponent(raw);
      } catch {
        // The SDK leaves such a header out; its value is a secret all the same.
        continue;
      }
      values.push(sent);
      const credential = /^[A-Za-z][\w.+-]*\s+(\S+)$/.exec(sent)?.[1];
      if (credential) values.push(credential);
    }
  }
  return values.filter((value) => value.length >= MIN_SECRET_LENGTH);
}

/**
 * A start-up warning when production sends the collector's credentials in clear text: headers set for an
 * `http://` endpoint that is not on this machine. Names the variables, never their values. Null otherwise.
 */
export function clearTextOtlpWarning(env: Env): string | null {
  if (env.NODE_ENV !== 'production') return null;
  const headers = HEADER_VARIABLES.filter((name) => env[name]?.includes('='));
  if (headers.length === 0) return null;
  // The traces endpoint, when set, is the one the trace exporter uses (the other is its fallback).
  const name = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim() ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT';
  const endpoint = URL.parse(env[name]?.trim() ?? '');
  if (endpoint?.protocol !== 'http:' || isLoopbackHost(endpoint.hostname)) return null;
  return (
    `OpenTelemetry: ${headers.join(' and ')} will be sent in clear text: ${name} is plain http to a host that is not ` +
    'this machine, and anyone on the path can read the headers (often the collector\'s API key). Use an https endpoint, or a collector on localhost'
  );
}
