/**
 * A time as every page and the CLI show it: "2026-12-06 16:20 UTC" (minutes, UTC, whatever the server's or
 * viewer's zone). With `seconds`, "2026-12-06 16:20:43 UTC", where records are told apart by the second (the
 * audit trail, alerts).
 */
export function utc(ms: number, { seconds = false }: { readonly seconds?: boolean } = {}): string {
  return `${new Date(ms).toISOString().slice(0, seconds ? 19 : 16).replace('T', ' ')} UTC`;
}
