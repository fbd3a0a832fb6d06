/**
 * A time as every page and the CLI show it: "2026-12-06 16:20 UTC" (minutes, UTC, whatever the server's or
 * viewer's zone). With `seconds`, "2026-12-06 16:20:43 UTC", where records are told apart by the second (the
 * audit trail, alerts). `at` is epoch milliseconds, or an ISO 8601 string as the store and the API hold times.
 */
export function utc(at: number | string, { seconds = false }: { readonly seconds?: boolean } = {}): string {
  return `${new Date(at).toISOString().slice(0, seconds ? 19 : 16).replace('T', ' ')} UTC`;
}
