import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';

/** Emitted once per user, period, limit and threshold when committed usage reaches 80, 90 or 100 %. */
export interface UsageAlert {
  /** The user whose usage crossed the threshold. */
  userId: string;
  /** `scope:metric:period`, e.g. `ai_text:calls:month`. */
  limitId: string;
  /** A provider, a provider group or `'*'`. */
  scope: string;
  /** What the limit counts. */
  metric: LimitMetric;
  /** The period it counts over. */
  period: PeriodUnit;
  /** The period the usage was counted in, e.g. `month:2026-11-01`. */
  periodKey: string;
  /** 80, 90 or 100 (percent). */
  threshold: number;
  /** Committed usage after the settlement that crossed the threshold: calls, tokens or micro-dollars. */
  used: number;
  /** The limit, in the same unit. */
  max: number;
  /** When it was crossed (milliseconds since the epoch). */
  at: number;
  /** A shadow limit's threshold (`Limit.mode: 'shadow'`): it never refused anything. */
  shadow?: true;
}
