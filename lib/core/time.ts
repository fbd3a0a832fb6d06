/** A time as every page and the CLI show it: "2026-12-06 16:20 UTC" (minutes, UTC, whatever the server's or viewer's zone). */
export function utc(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}
