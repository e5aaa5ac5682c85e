import type { ActivityAlert, ActivityEvent, UserActivity } from './usage-store.interface';

/**
 * The queries of a user's dashboard, the same on a user's SQLite file and on the shared PostgreSQL tables
 * (`pgText` numbers the placeholders): the user id (stored form), then the billing month or a row count.
 */
export const ACTIVITY_DAYS_SQL = `SELECT occurred_at / 86400000 AS day, COUNT(*) AS calls, sum(cost_micros) AS cost_micros
  FROM usage_events WHERE user_id = ? AND period_key = ? GROUP BY occurred_at / 86400000 ORDER BY day`;
export const ACTIVITY_RECENT_SQL = `SELECT request_id, provider, model, input_tokens, output_tokens, cost_micros, outcome,
  estimated, status_code, occurred_at FROM usage_events WHERE user_id = ?
  ORDER BY occurred_at DESC, request_id DESC LIMIT ?`;
export const ACTIVITY_ALERTS_SQL = `SELECT period_key, limit_id, threshold, used, max_value, created_at FROM usage_alerts
  WHERE user_id = ? ORDER BY created_at DESC, limit_id, threshold DESC LIMIT ?`;

/** The PostgreSQL text of a query written with `?` placeholders. */
export function pgText(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

type Num = number | string;

/** The activity of the three queries' rows (numbers may come back as text from PostgreSQL). */
export function activityOf(
  days: { day: Num; calls: Num; cost_micros: Num }[],
  recent: {
    request_id: string;
    provider: string;
    model: string | null;
    input_tokens: Num;
    output_tokens: Num;
    cost_micros: Num;
    outcome: ActivityEvent['outcome'];
    estimated: Num | boolean;
    status_code: Num;
    occurred_at: Num;
  }[],
  alerts: {
    period_key: string;
    limit_id: string;
    threshold: Num;
    used: Num;
    max_value: Num;
    created_at: Num;
  }[],
): UserActivity {
  return {
    days: days.map((d) => ({
      day: Math.floor(Number(d.day)),
      calls: Number(d.calls),
      costMicros: Number(d.cost_micros),
    })),
    recent: recent.map((r): ActivityEvent => ({
      requestId: r.request_id,
      provider: r.provider,
      model: r.model,
      inputTokens: Number(r.input_tokens),
      outputTokens: Number(r.output_tokens),
      costMicros: Number(r.cost_micros),
      outcome: r.outcome,
      estimated: r.estimated === true || Number(r.estimated) === 1,
      statusCode: Number(r.status_code),
      occurredAt: Number(r.occurred_at),
    })),
    alerts: alerts.map((a): ActivityAlert => ({
      periodKey: a.period_key,
      limitId: a.limit_id,
      threshold: Number(a.threshold),
      used: Number(a.used),
      max: Number(a.max_value),
      createdAt: Number(a.created_at),
    })),
  };
}
