import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';
import type { StoredAdjustment, StoredOverride } from './usage-store.interface';

/** An audit row of `usage_adjustments`, as both stores keep it. */
export interface AdjustmentRow {
  id: string;
  user_id: string;
  kind: StoredAdjustment['kind'];
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  period_key: string | null;
  amount: number | null;
  max_value: number | null;
  until: number | null;
  actor: string;
  reason: string;
  created_at: number;
}

/** An audit row in the stores' common form (PostgreSQL rows read the same). */
export function adjustmentOf(r: AdjustmentRow): StoredAdjustment {
  const num = (v: number | string | null) => (v === null ? null : Number(v));
  return {
    id: r.id,
    userId: r.user_id,
    kind: r.kind,
    scope: r.scope,
    metric: r.metric,
    period: r.period,
    periodKey: r.period_key,
    amount: num(r.amount),
    max: num(r.max_value),
    until: num(r.until),
    actor: r.actor,
    reason: r.reason,
    createdAt: Number(r.created_at),
  };
}

/** The columns of `usage_adjustments` an `AdjustmentRow` reads, newest first by `seq`. */
export const ADJUSTMENT_COLUMNS =
  'id, user_id, kind, scope, metric, period, period_key, amount, max_value, until, actor, reason, created_at';

/** A row of `usage_limit_overrides` (per-user store: `usage_overrides`). */
export interface OverrideRow {
  user_id: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  max_value: number | string;
  until: number | string | null;
}

/** The override of a row, for the app's user id `userId`. */
export function overrideOf(r: OverrideRow, userId: string): StoredOverride {
  return {
    userId,
    scope: r.scope,
    metric: r.metric,
    period: r.period,
    max: Number(r.max_value),
    until: r.until === null ? null : Number(r.until),
  };
}
