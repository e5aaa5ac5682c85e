/**
 * The shared store's SQL (PostgreSQL). Each is one statement (admission a call of the
 * `usage_reserve_batch` function), so each is atomic on its own; none reads then writes from the
 * application. Counter rows are always locked in (user, period, scope, metric) order: no deadlocks.
 */

/** Gives a reservation back without charging (only if it still exists). */
export const RELEASE = `
WITH del AS (
  DELETE FROM usage_reservations WHERE request_id = $1 RETURNING 1
),
x AS (
  SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::int8[]) AS x(period_key, scope, metric, amount)
),
lk AS (
  SELECT c.period_key, c.scope, c.metric, x.amount
  FROM usage_counters c
  JOIN x ON c.period_key = x.period_key AND c.scope = x.scope AND c.metric = x.metric
  WHERE c.user_id = $2 AND EXISTS (SELECT 1 FROM del)
  ORDER BY c.period_key, c.scope, c.metric
  FOR UPDATE OF c
)
UPDATE usage_counters c
SET reserved = greatest(0, c.reserved - l.amount)
FROM lk l
WHERE c.user_id = $2 AND c.period_key = l.period_key AND c.scope = l.scope AND c.metric = l.metric`;

/**
 * CTEs that take each row of `parts` (user_id, period_key, scope, metric, amount) out of its counter's
 * `reserved`, locking the counters in key order like every other statement.
 */
const UNRESERVE_PARTS = `lk AS (
  SELECT c.user_id, c.period_key, c.scope, c.metric, p.amount
  FROM usage_counters c
  JOIN parts p ON c.user_id = p.user_id AND c.period_key = p.period_key AND c.scope = p.scope AND c.metric = p.metric
  ORDER BY c.user_id, c.period_key, c.scope, c.metric
  FOR UPDATE OF c
),
upd AS (
  UPDATE usage_counters c
  SET reserved = greatest(0, c.reserved - l.amount)
  FROM lk l
  WHERE c.user_id = l.user_id AND c.period_key = l.period_key AND c.scope = l.scope AND c.metric = l.metric
  RETURNING 1
)`;

/** Releases reservations whose instance never settled them (it died mid-request), once each. */
export const SWEEP_EXPIRED = `
WITH expired AS (
  DELETE FROM usage_reservations WHERE expires_at < $1 RETURNING user_id, charges
),
parts AS (
  SELECT e.user_id, x.p AS period_key, x.sc AS scope, x.m AS metric, sum(x.a)::int8 AS amount
  FROM expired e
  CROSS JOIN LATERAL jsonb_to_recordset(e.charges::jsonb) AS x(p text, sc text, m text, a int8)
  GROUP BY e.user_id, x.p, x.sc, x.m
),
${UNRESERVE_PARTS}
SELECT (SELECT count(*) FROM expired) AS released`;

/** The same, for a database with durable intent: rows carrying an intent are left to `EXPIRED_INTENTS`. */
export const SWEEP_EXPIRED_WITHOUT_INTENT = SWEEP_EXPIRED.replace(
  'WHERE expires_at < $1 RETURNING',
  'WHERE expires_at < $1 AND interrupted IS NULL RETURNING',
);

/** Expired reservations that carry the settlement charging them at their estimate (durable intent). */
export const EXPIRED_INTENTS = `
SELECT interrupted FROM usage_reservations
WHERE expires_at < $1 AND interrupted IS NOT NULL
ORDER BY request_id LIMIT 500`;

export const INSERT_ALERT = `
INSERT INTO usage_alerts (user_id, period_key, limit_id, threshold, used, max_value, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING threshold`;

/**
 * The alerts a settlement batch crossed ($1: JSON list), stored and put in the webhook outbox once per
 * webhook ($2: URLs), in the batch's transaction. Returns the alerts that were new (an alert is stored once
 * per user, period, limit and threshold).
 */
export const INSERT_ALERTS_OUTBOX = `
WITH a AS (
  SELECT * FROM jsonb_to_recordset($1::jsonb) AS a(i int, u text, p text, lid text, t int, used int8, mx int8,
    at int8, alert jsonb)
),
ins AS (
  INSERT INTO usage_alerts (user_id, period_key, limit_id, threshold, used, max_value, created_at)
  SELECT u, p, lid, t, used, mx, at FROM a ORDER BY i
  ON CONFLICT DO NOTHING
  RETURNING user_id, period_key, limit_id, threshold
),
ob AS (
  INSERT INTO usage_alert_outbox (target, user_id, period_key, limit_id, threshold, alert)
  SELECT tg.target, a.u, a.p, a.lid, a.t, a.alert
  FROM a JOIN ins ON ins.user_id = a.u AND ins.period_key = a.p AND ins.limit_id = a.lid AND ins.threshold = a.t
  CROSS JOIN unnest($2::text[]) WITH ORDINALITY AS tg(target, n)
  ORDER BY a.i, tg.n
  ON CONFLICT DO NOTHING
  RETURNING 1
)
SELECT a.i FROM a JOIN ins ON ins.user_id = a.u AND ins.period_key = a.p AND ins.limit_id = a.lid AND ins.threshold = a.t`;

/**
 * Claims the outbox rows due for delivery: for each webhook and user the oldest not parked (a later one
 * waits until it is delivered or parked), not claimed by an instance now. $1 now, $2 how many, $3 the claim
 * (ms), $4 the webhooks this instance delivers to.
 */
export const CLAIM_OUTBOX = `
WITH heads AS (
  SELECT DISTINCT ON (target, user_id) id FROM usage_alert_outbox
  WHERE NOT parked AND target = ANY($4::text[])
  ORDER BY target, user_id, id
),
due AS (
  SELECT o.id FROM usage_alert_outbox o JOIN heads h ON h.id = o.id
  WHERE o.next_at <= $1 AND o.claimed_until <= $1
  ORDER BY o.id LIMIT $2
  FOR UPDATE OF o SKIP LOCKED
)
UPDATE usage_alert_outbox o SET claimed_until = $1 + $3 FROM due WHERE o.id = due.id
RETURNING o.id, o.target, o.user_id, o.alert::text AS alert, o.attempts`;

export const INSERT_REQUEST = `
INSERT INTO api_requests (request_id, user_id, provider, path, method, status_code, duration_ms, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (request_id) DO NOTHING`;

export const READ_COUNTERS = `
SELECT r.i, coalesce(c.used, 0) AS used, coalesce(c.reserved, 0) AS reserved, coalesce(c.granted, 0) AS granted,
  coalesce(c.forgiven, 0) AS forgiven
FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS r(period_key, scope, metric, i)
LEFT JOIN usage_counters c
  ON c.user_id = $1 AND c.period_key = r.period_key AND c.scope = r.scope AND c.metric = r.metric
ORDER BY r.i`;

export const DATABASE_NOW = `SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8 AS now`;

/** Key of the advisory lock that serialises migrations across instances starting together. */
export const MIGRATION_LOCK_KEY = 0x75736167; // 'usag'

/** Admits a batch of requests in one statement (see the `usage_reserve_batch` migration). */
export const RESERVE_BATCH = `SELECT o_id, o_pass, o_state FROM usage_reserve_batch($1, $2::jsonb)`;

/**
 * Settles a batch in one statement (see the `usage_settle_batch` migration): deletes the reservations, appends
 * the ledger and request rows, and moves each counter's amounts from `reserved` to `used`.
 */
export const SETTLE_BATCH = `SELECT o_inserted AS inserted, o_requests AS requests, o_counters AS counters
FROM usage_settle_batch($1::json, $2)`;

/** Takes a batch of leases in one statement (see the `usage_take_leases` migration): each whole or not at all. */
export const TAKE_LEASES = `SELECT o_id, o_amount FROM usage_take_leases($1, $2, $3::jsonb)`;

/**
 * Gives leases back — those named in $1 and those expired before $2 (the sweeper's call) — once each (see the
 * `usage_return_leases` migration).
 */
export const RETURN_LEASES = `SELECT o_released AS released FROM usage_return_leases($1::text[], $2)`;

/** Creates a counter row of the current period if it is missing ($1 user … $6 now), for an admin change. */
export const ENSURE_COUNTER = `
INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
VALUES ($1, $2, $3, $4, 0, 0, $5, $6)
ON CONFLICT (user_id, period_key, scope, metric) DO NOTHING`;

/** Locks a counter row (as admissions do) for a grant or reset, and reads what a reset forgives. */
export const LOCK_COUNTER = `
SELECT used, forgiven FROM usage_counters
WHERE user_id = $1 AND period_key = $2 AND scope = $3 AND metric = $4
FOR UPDATE`;

export const ADJUST_COUNTER = `
UPDATE usage_counters SET granted = granted + $5, forgiven = forgiven + $6, updated_at = $7
WHERE user_id = $1 AND period_key = $2 AND scope = $3 AND metric = $4`;

export const INSERT_ADJUSTMENT = `
INSERT INTO usage_adjustments (id, user_id, kind, scope, metric, period, period_key, amount, max_value, until,
  actor, reason, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`;

export const UPSERT_OVERRIDE = `
INSERT INTO usage_limit_overrides (user_id, scope, metric, period, max_value, until)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (user_id, scope, metric, period) DO UPDATE SET max_value = excluded.max_value, until = excluded.until`;

export const DELETE_OVERRIDE = `
DELETE FROM usage_limit_overrides WHERE user_id = $1 AND scope = $2 AND metric = $3 AND period = $4`;

/** The channel an override change is announced on (payload: the stored user id), to every instance. */
export const OVERRIDES_CHANNEL = 'usage_limit_overrides';
