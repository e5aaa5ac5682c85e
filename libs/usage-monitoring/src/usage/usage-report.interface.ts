import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';

/** One limit of the user's plan in its current period. Cost figures are USD (6 decimals). */
export interface LimitUsage {
  /** The limit's scope: a provider, a provider group or `'*'`. */
  scope: string;
  /** The providers the scope covers (`['*']` for every provider). */
  providers: string[];
  /** What the limit counts. */
  metric: LimitMetric;
  /** The period it counts over. */
  period: PeriodUnit;
  /** The current period, e.g. `month:2026-11-01`. */
  period_key: string;
  /** Settled usage this period (less what an admin's reset forgave). */
  used: number;
  /** Held by requests in flight. */
  reserved: number;
  /** The limit's `max` (or an admin's override of it), plus what an admin granted this period. */
  limit: number;
  /** What is left: `limit - used - reserved`, at least 0. */
  remaining: number;
  /** `used` in percent of `limit`, two decimals; a limit of 0 reads as 100. */
  percentage: number;
  /** ISO 8601 time the period ends. */
  reset_at: string;
}

/** A user's own usage report (`UsageService.getUsage`). */
export interface UsageReport {
  /** The user's plan. */
  plan: string;
  /** Each limit of the plan in its current period. */
  limits: LimitUsage[];
  /** ISO 8601 time of the report. */
  timestamp: string;
}
