import type { UsageAlert } from '../alerts/usage-alert.interface';
import { ALERT_THRESHOLDS } from '../usage-monitoring.constants';
import type { ActualUsage, LimitCharge, ReserveRequest, ReserveResult } from './usage-store.interface';

/** The amount a settlement adds to a counter of the given metric. */
export function actualOf(actual: ActualUsage, metric: LimitCharge['metric']): number {
  return metric === 'calls' ? actual.calls : metric === 'tokens' ? actual.tokens : actual.costMicros;
}

/** Alert thresholds (percent) a counter crossed going from `before` to `after` under `max`. */
export function crossedThresholds(before: number, after: number, max: number): readonly number[] {
  let crossed: number[] | undefined;
  if (max > 0)
    for (const t of ALERT_THRESHOLDS)
      if (before * 100 < t * max && after * 100 >= t * max) (crossed ??= []).push(t);
  // Most settlements cross none: no array for them (this runs for every limit of every request).
  return crossed ?? NONE_CROSSED;
}
const NONE_CROSSED: readonly number[] = Object.freeze([]);

/**
 * The alert of a counter crossing `threshold` of `max` (the limit as adjusted), at `used`; `shadow`: the
 * charge's shadow limit crossed it.
 */
export function thresholdAlert(
  userId: string,
  c: LimitCharge,
  threshold: number,
  used: number,
  max: number,
  at: number,
  shadow: boolean,
): UsageAlert {
  const alert: UsageAlert = {
    userId,
    limitId: shadow ? c.shadowLimitId! : c.limitId,
    scope: c.scope,
    metric: c.metric,
    period: c.period,
    periodKey: c.periodKey,
    threshold,
    used,
    max,
    at,
  };
  if (shadow) alert.shadow = true;
  return alert;
}

/**
 * Stored text without NUL: SQLite's JSON functions end text at a NUL and PostgreSQL cannot hold one, so
 * such characters (from provider bodies) become U+FFFD.
 */
export function withoutNul(v: string | null): string | null {
  return v !== null && v.includes('\u0000') ? v.replaceAll('\u0000', '\ufffd') : v;
}

/** The admitted answer to a reservation request: the reservation is the request's own charges. */
export function admittedAs(req: ReserveRequest): Extract<ReserveResult, { admitted: true }> {
  return {
    admitted: true,
    reservation: {
      requestId: req.requestId,
      userId: req.userId,
      provider: req.provider,
      charges: req.charges,
      createdAt: req.now,
      intent: false,
    },
  };
}
