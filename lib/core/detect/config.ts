import { z } from 'zod';
import { secretRefSchema } from '../config/schema';

/**
 * The anomaly detector's rules (README "Anomaly detection"): the `detector` object of the JSON config, or
 * `createKeyward({ detector })`. Every threshold has a default, so `{}` (or nothing) turns on the defaults;
 * `{"enabled": false}` turns detection off (decoys still revoke: a decoy has no innocent use).
 */
const positive = z.number().positive();
const count = z.number().int().min(1);

const volumeRule = (factor: number, floor: number, what: string) =>
  z
    .strictObject({
      factor: positive.default(factor).describe(`Anomalous above this many times the ${what} baseline (EWMA per minute).`),
      minPerMinute: positive.default(floor).describe(`...and above this many ${what} per minute whatever the baseline (new users, quiet users).`),
    })
    .prefault({});

export const detectorSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    baselineHalfLifeMinutes: positive.max(7 * 24 * 60).default(60).describe('Half-life of the rolling baselines (EWMA), in minutes.'),
    calls: volumeRule(5, 40, 'calls'),
    errors: volumeRule(5, 20, 'failed calls'),
    spend: volumeRule(5, 50_000, 'budget units'),
    ipsPerSession: z
      .strictObject({
        max: count.default(4).describe('One session seen from more client IPs than this...'),
        windowMinutes: positive.max(24 * 60).default(10).describe('...within this many minutes requires re-authentication.'),
      })
      .prefault({}),
    newRoutes: z
      .strictObject({
        max: count.default(3).describe('More routes the user never called before than this...'),
        windowMinutes: positive.max(24 * 60).default(10).describe('...within this many minutes requires re-authentication...'),
        minHistoryCalls: count.default(200).describe('...once the user has this many calls of history.'),
      })
      .prefault({}),
    throttle: z
      .strictObject({
        limit: count.default(10).describe('A throttled user may make this many calls...'),
        windowSeconds: count.max(3600).default(60).describe('...per this many seconds...'),
        forMinutes: positive.max(7 * 24 * 60).default(15).describe('...for this long (it is lifted after, or by an admin).'),
      })
      .prefault({}),
    escalateAfterMinutes: positive
      .max(24 * 60)
      .default(10)
      .describe('An anomaly still there this long after the last step takes the next: throttle → re-authenticate → revoke and suspend.'),
    cooldownMinutes: positive.max(7 * 24 * 60).default(60).describe('A subject quiet this long starts again from the first step.'),
    scrubberHits: z
      .strictObject({ alert: z.boolean().default(true).describe('Alert (and suggest rotation) when an upstream echoes a key.') })
      .prefault({}),
    webhook: z
      .strictObject({
        url: z
          .url({ protocol: /^https?$/ })
          .refine((url) => !/^https?:\/\/[^/?#]*@/.test(url), 'must not hold credentials (user:password@); put a token in the path or query')
          .describe('Where alerts are POSTed (https, or http on a loopback address).'),
        secret: secretRefSchema.describe('HMAC-SHA256 signing secret (≥ 32 characters), from the environment.'),
        maxAttempts: count.max(20).default(6).describe('Deliveries tried, with exponential backoff from 1 s.'),
      })
      .optional(),
  })
  .describe('Anomaly detection and its graduated response (README "Anomaly detection").');

export type DetectorInput = z.input<typeof detectorSchema>;
export type DetectorConfig = z.output<typeof detectorSchema>;

/** The defaults, for a deployment whose config says nothing about the detector. */
export const DEFAULT_DETECTOR: DetectorConfig = detectorSchema.parse({});
