/**
 * The shared store's SQL (PostgreSQL). Each is one statement, so each is atomic on its own; none reads
 * then writes from the application.
 */

/** Creates the counter rows a reservation needs (first use of a period, scope and metric), in key order. */
export const ENSURE_COUNTERS = `
INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
SELECT $1, r.period_key, r.scope, r.metric, 0, 0, r.period_end, $5
FROM unnest($2::text[], $3::text[], $4::text[], $6::int8[]) AS r(period_key, scope, metric, period_end)
ORDER BY r.period_key, r.scope, r.metric
ON CONFLICT (user_id, period_key, scope, metric) DO NOTHING`;

/**
 * Admission: locks the request's counter rows in a fixed order, decides all of them on their latest
 * values (`used + reserved + need <= max`), and only if every one passes adds to `reserved` and records
 * the reservation. All or none, in one statement.
 */
export const RESERVE = `
WITH req AS (
  SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
    AS r(period_key, scope, metric, amount, max_value)
),
locked AS (
  SELECT c.period_key, c.scope, c.metric, c.used, c.reserved, r.amount, r.max_value
  FROM usage_counters c
  JOIN req r ON c.period_key = r.period_key AND c.scope = r.scope AND c.metric = r.metric
  WHERE c.user_id = $1
  ORDER BY c.period_key, c.scope, c.metric
  FOR UPDATE OF c
),
verdict AS (
  SELECT count(*) = (SELECT count(*) FROM req)
     AND coalesce(bool_and(used + reserved + greatest(amount, 1) <= max_value), true) AS pass
  FROM locked
),
upd AS (
  UPDATE usage_counters c
  SET reserved = l.reserved + l.amount, updated_at = $7
  FROM locked l, verdict v
  WHERE v.pass AND c.user_id = $1 AND c.period_key = l.period_key AND c.scope = l.scope AND c.metric = l.metric
  RETURNING c.period_key
),
ins AS (
  INSERT INTO usage_reservations (request_id, user_id, provider, period_key, charges, status, created_at, expires_at)
  SELECT $8, $1, $9, $10, $11, 'open', $7, $12 FROM verdict WHERE pass
  RETURNING 1
)
SELECT (SELECT pass FROM verdict) AS pass,
       (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins) AS written,
       (SELECT json_agg(json_build_object('period_key', period_key, 'scope', scope, 'metric', metric,
                                          'used', used, 'reserved', reserved)) FROM locked) AS state`;

/**
 * Settlement: deletes the reservation, appends the ledger row (idempotent by request id), moves the
 * amounts from `reserved` to `used` only for what those two statements actually did, and appends the
 * monitoring row. A retry, or a reservation already swept, cannot count twice.
 */
export const SETTLE = `
WITH del AS (
  DELETE FROM usage_reservations WHERE request_id = $1 RETURNING 1
),
ev AS (
  INSERT INTO usage_events (request_id, user_id, provider, model, endpoint, method, status_code,
    input_tokens, output_tokens, cost_micros, response_time_ms, request_bytes, response_bytes, user_agent, ip,
    searches, images, pages, estimated, outcome, period_key, occurred_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)
  ON CONFLICT (request_id) DO NOTHING
  RETURNING 1
),
x AS (
  SELECT * FROM unnest($23::text[], $24::text[], $25::text[], $26::int8[], $27::int8[])
    AS x(period_key, scope, metric, amount, actual)
),
lk AS (
  -- Row locks in the same order as admission takes them: no deadlock between the two.
  SELECT c.period_key, c.scope, c.metric, x.amount, x.actual
  FROM usage_counters c
  JOIN x ON c.period_key = x.period_key AND c.scope = x.scope AND c.metric = x.metric
  WHERE c.user_id = $2
  ORDER BY c.period_key, c.scope, c.metric
  FOR UPDATE OF c
),
upd AS (
  UPDATE usage_counters c
  SET used = c.used + CASE WHEN EXISTS (SELECT 1 FROM ev) THEN l.actual ELSE 0 END,
      reserved = greatest(0, c.reserved - CASE WHEN EXISTS (SELECT 1 FROM del) THEN l.amount ELSE 0 END),
      updated_at = $22
  FROM lk l
  WHERE c.user_id = $2 AND c.period_key = l.period_key AND c.scope = l.scope AND c.metric = l.metric
  RETURNING c.period_key, c.scope, c.metric, c.used
),
req AS (
  INSERT INTO api_requests (request_id, user_id, provider, path, method, status_code, duration_ms, occurred_at)
  VALUES ($1, $2, $3, $5, $6, $7, $11, $22)
  ON CONFLICT (request_id) DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(*) FROM ev) AS inserted, (SELECT count(*) FROM req) AS requests,
       (SELECT json_agg(json_build_object('period_key', period_key, 'scope', scope, 'metric', metric, 'used', used))
        FROM upd) AS counters`;

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

/** Releases reservations whose instance never settled them (it died mid-request), once each. */
export const SWEEP_EXPIRED = `
WITH expired AS (
  DELETE FROM usage_reservations WHERE expires_at < $1 RETURNING user_id, charges
),
parts AS (
  SELECT e.user_id, x.period_key, x.scope, x.metric, sum(x.amount)::int8 AS amount
  FROM expired e
  CROSS JOIN LATERAL jsonb_to_recordset(e.charges::jsonb) AS x(period_key text, scope text, metric text, amount int8)
  GROUP BY e.user_id, x.period_key, x.scope, x.metric
),
lk AS (
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
)
SELECT (SELECT count(*) FROM expired) AS released`;

export const INSERT_ALERT = `
INSERT INTO usage_alerts (user_id, period_key, limit_id, threshold, used, max_value, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING threshold`;

export const INSERT_REQUEST = `
INSERT INTO api_requests (request_id, user_id, provider, path, method, status_code, duration_ms, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (request_id) DO NOTHING`;

export const READ_COUNTERS = `
SELECT r.i, coalesce(c.used, 0) AS used, coalesce(c.reserved, 0) AS reserved
FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS r(period_key, scope, metric, i)
LEFT JOIN usage_counters c
  ON c.user_id = $1 AND c.period_key = r.period_key AND c.scope = r.scope AND c.metric = r.metric
ORDER BY r.i`;

export const DATABASE_NOW = `SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8 AS now`;

/** Key of the advisory lock that serialises migrations across instances starting together. */
export const MIGRATION_LOCK_KEY = 0x75736167; // 'usag'
