import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';

/** One limit of the user's plan in its current period. Cost figures are USD (6 decimals). */
export interface LimitUsage {
  scope: string;
  /** The providers the scope covers (`['*']` for every provider). */
  providers: string[];
  metric: LimitMetric;
  period: PeriodUnit;
  period_key: string;
  used: number;
  /** Held by requests in flight. */
  reserved: number;
  limit: number;
  remaining: number;
  percentage: number;
  reset_at: string;
}

/** A user's own usage report. */
export interface UsageReport {
  plan: string;
  limits: LimitUsage[];
  timestamp: string;
}
