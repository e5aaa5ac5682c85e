import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';

/** Emitted once per user, period, limit and threshold when committed usage reaches 80, 90 or 100 %. */
export interface UsageAlert {
  userId: string;
  /** `scope:metric:period`, e.g. `ai_text:calls:month`. */
  limitId: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  periodKey: string;
  threshold: number;
  /** Calls, tokens or micro-dollars. */
  used: number;
  max: number;
  at: number;
}
