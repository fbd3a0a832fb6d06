import { describe, expect, it } from 'vitest';
import nextConfig from '../../../next.config';
import { PROXIED_CONTENT_SECURITY_POLICY, PROXIED_PATHS_SOURCE } from '../../../lib/core/respond/content-policy';

/**
 * next.config.ts writes the proxied answers' policy and path pattern out (a container copies it without lib/), and
 * server.ts finds the rule for the fast lane by the core's PROXIED_PATHS_SOURCE: the two must not drift apart.
 */
describe("next.config.ts's rule for proxied answers", () => {
  it("is the core's path pattern, with the core's policy, and comes after the site-wide rule", async () => {
    const rules = (await nextConfig.headers!()) ?? [];
    const proxied = rules.findIndex((rule) => rule.source === PROXIED_PATHS_SOURCE);
    expect(proxied, `no rule for ${PROXIED_PATHS_SOURCE}`).toBeGreaterThan(-1);
    expect(rules[proxied]!.headers).toEqual([{ key: 'Content-Security-Policy', value: PROXIED_CONTENT_SECURITY_POLICY }]);
    // Later rules win for the same header: the site's own policy must not replace the sandbox.
    const siteWide = rules.findIndex((rule) => rule.source === '/:path*');
    expect(siteWide).toBeLessThan(proxied);
  });
});
