import { ConfigError } from '../config/load';
import type { BudgetConfig, CostConfig, Period, QuotaConfig, RateLimitConfig } from '../config/policy';

export type Subject = 'user' | 'credential' | 'upstream' | 'ip';

export interface RateRule {
  /** Unique across the configuration: the counter's key prefix. */
  readonly id: string;
  /** Shown to clients in RateLimit-Policy. */
  readonly name: string;
  readonly by: Subject;
  readonly limit: number;
  readonly windowSeconds: number;
  readonly roles: ReadonlySet<string> | null;
}

export interface MeterRule {
  readonly id: string;
  readonly name: string;
  /** `quota` counts requests (1 each); `budget` counts the route's cost units. */
  readonly kind: 'quota' | 'budget';
  readonly by: Exclude<Subject, 'ip'>;
  readonly limit: number;
  readonly period: Period;
  readonly roles: ReadonlySet<string> | null;
}

export interface RouteLimits {
  readonly rate: readonly RateRule[];
  readonly meters: readonly MeterRule[];
  readonly cost: CostConfig;
}

export interface LimitConfigs {
  readonly rateLimits?: readonly RateLimitConfig[];
  readonly quotas?: readonly QuotaConfig[];
  readonly budgets?: readonly BudgetConfig[];
}

const DEFAULT_COST: CostConfig = { reserve: 1 };

/**
 * Compiles the upstream's and one route's limit rules into the list checked for that route. Names are
 * what clients see in RateLimit-Policy: defaults say what the rule counts; route rules get a "route-"
 * prefix so they never read like the upstream's; a name used twice for one route is a config error.
 */
export function compileRouteLimits(
  upstreamId: string,
  routeKey: string,
  upstream: LimitConfigs,
  route: LimitConfigs & { cost?: CostConfig },
  where: string,
): RouteLimits {
  const names = new Set<string>();
  const rate: RateRule[] = [];
  const meters: MeterRule[] = [];
  const levels = [
    { configs: upstream, scope: `${upstreamId}|*`, prefix: '', at: `upstreams.${upstreamId}` },
    { configs: route, scope: `${upstreamId}|${routeKey}`, prefix: 'route-', at: where },
  ];
  const claim = (explicit: string | undefined, fallback: string, at: string) => {
    let name = explicit ?? fallback;
    if (explicit === undefined) for (let n = 2; names.has(name); n++) name = `${fallback}-${n}`;
    if (names.has(name)) throw new ConfigError(`  - ${at}.name: "${name}" is used by another limit of this route`);
    names.add(name);
    return name;
  };
  for (const { configs, scope, prefix, at } of levels) {
    (configs.rateLimits ?? []).forEach((rule, i) => {
      const name = claim(rule.name, `${prefix}${rule.by}-${rule.windowSeconds}s`, `${at}.rateLimits.${i}`);
      rate.push({ id: `${scope}|${name}`, name, by: rule.by, limit: rule.limit, windowSeconds: rule.windowSeconds, roles: roleSet(rule.roles) });
    });
    (configs.quotas ?? []).forEach((rule, i) => {
      const name = claim(rule.name, `${prefix}requests-${rule.by}-${rule.period}`, `${at}.quotas.${i}`);
      meters.push({ id: `${scope}|${name}`, name, kind: 'quota', by: rule.by, limit: rule.requests, period: rule.period, roles: roleSet(rule.roles) });
    });
    (configs.budgets ?? []).forEach((rule, i) => {
      const name = claim(rule.name, `${prefix}units-${rule.by}-${rule.period}`, `${at}.budgets.${i}`);
      meters.push({ id: `${scope}|${name}`, name, kind: 'budget', by: rule.by, limit: rule.units, period: rule.period, roles: roleSet(rule.roles) });
    });
  }
  return { rate, meters, cost: route.cost ?? DEFAULT_COST };
}

function roleSet(roles: readonly string[] | undefined): ReadonlySet<string> | null {
  return roles ? new Set(roles) : null;
}

/** A rule with `roles` applies only to sessions holding one of them. */
export function appliesTo(rule: { readonly roles: ReadonlySet<string> | null }, roles: readonly string[]): boolean {
  return rule.roles === null || roles.some((role) => rule.roles!.has(role));
}
