/**
 * Runs once when the server starts. Validates every setting and upstream so that a bad configuration stops
 * `next start` with a message naming the field (never a secret) instead of failing requests later, after
 * registering OpenTelemetry tracing when an OTLP endpoint is set (README "Metrics and traces").
 */
export async function register() {
  if (process.env.NEXT_RUNTIME !== 'nodejs') return;
  // keyward.ts imports the upstreams: one declared in TypeScript with a bad setting throws while it loads, and
  // stops start-up with the same message as any other bad setting.
  const { checkStartupImport } = await import('keyward/core');
  const { keyward } = await checkStartupImport(() => import('./keyward'));
  await keyward.register();
}
