import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The planner settings under which the shared store's batch statements run (each function's `SET`): no hash
 * or merge join and no sequential scan, so that every counter, reservation and lease a batch touches is found
 * through its key's index, one lookup per key. The planner takes a batch's JSON for 100 rows (10,000 for the
 * charges inside its rows) where a batch has a few, and against that guess reading the whole counter table
 * into a hash looked cheaper than a lookup per key, with the table analyzed or not. With the 3,000 counters of 1,000 users beside it, a settle statement of one user's 26
 * requests read all of them (`auto_explain`, 2026-12-07) and took 2.7 ms, against 1.0 ms before those
 * users' counters existed; `test/keyed-plans.e2e-spec.ts` counts the rows each call reads.
 */
const KEYED = `SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off`;

/**
 * Settles a batch (`usage_settle_batch(rows, now)`, one statement): deletes the reservations, appends the
 * ledger and request rows (idempotent by request id), and moves each counter's summed amounts from `reserved`
 * to `used` — only for the reservations actually deleted and the ledger rows actually inserted, locking
 * counters in the same order as admission. The payload is read as `json`, not `jsonb`: `json_to_recordset`
 * takes the text as it is, where `jsonb` first builds its binary form: the whole statement 78 → 67 µs of
 * PostgreSQL's CPU per row (medians of six rounds of a scratch measurement, batches of 20, 2026-12-06).
 */
export const SETTLE_BATCH_FUNCTION = `
      CREATE OR REPLACE FUNCTION usage_settle_batch(p_rows json, p_now bigint)
      RETURNS TABLE (o_inserted jsonb, o_requests bigint, o_counters jsonb)
      LANGUAGE plpgsql ${KEYED} AS $fn$
      BEGIN
        RETURN QUERY
        WITH s AS (
          SELECT * FROM json_to_recordset(p_rows) AS s(id text, u text, provider text, model text, endpoint text,
            method text, status int, it int8, ot int8, cost int8, rt int, rqb int, rsb int, ua text, ip text, se int,
            im int, pa int, est boolean, outcome text, pk text, at int8, cit int8, cwt int8, rst int8, pv text,
            sr text, charges json)
        ),
        del AS (
          DELETE FROM usage_reservations r USING s WHERE r.request_id = s.id RETURNING r.request_id
        ),
        ev AS (
          INSERT INTO usage_events (request_id, user_id, provider, model, endpoint, method, status_code, input_tokens,
            output_tokens, cost_micros, response_time_ms, request_bytes, response_bytes, user_agent, ip, searches, images,
            pages, estimated, outcome, period_key, occurred_at, cached_input_tokens, cache_write_tokens, reasoning_tokens,
            price_version, shadow_refused)
          SELECT id, u, provider, model, endpoint, method, status, it, ot, cost, rt, rqb, rsb, ua, ip, se, im, pa, est,
            outcome, pk, at, cit, cwt, rst, pv, sr
          FROM s ORDER BY id
          ON CONFLICT (request_id) DO NOTHING
          RETURNING request_id
        ),
        rq AS (
          INSERT INTO api_requests (request_id, user_id, provider, path, method, status_code, duration_ms, occurred_at)
          SELECT id, u, provider, endpoint, method, status, rt, at FROM s ORDER BY id
          ON CONFLICT (request_id) DO NOTHING
          RETURNING 1
        ),
        d AS (
          SELECT s.u, c.p, c.sc, c.m,
            sum(CASE WHEN s.id IN (SELECT request_id FROM ev) THEN c.act ELSE 0 END)::int8 AS used_delta,
            sum(CASE WHEN s.id IN (SELECT request_id FROM del) THEN c.a ELSE 0 END)::int8 AS res_delta
          FROM s CROSS JOIN LATERAL json_to_recordset(s.charges) AS c(p text, sc text, m text, a int8, act int8)
          GROUP BY s.u, c.p, c.sc, c.m
        ),
        lk AS (
          SELECT uc.user_id, uc.period_key, uc.scope, uc.metric, d.used_delta, d.res_delta
          FROM usage_counters uc
          JOIN d ON uc.user_id = d.u AND uc.period_key = d.p AND uc.scope = d.sc AND uc.metric = d.m
          ORDER BY uc.user_id, uc.period_key, uc.scope, uc.metric
          FOR UPDATE OF uc
        ),
        upd AS (
          UPDATE usage_counters uc
          SET used = uc.used + l.used_delta, reserved = greatest(0, uc.reserved - l.res_delta), updated_at = p_now
          FROM lk l
          WHERE uc.user_id = l.user_id AND uc.period_key = l.period_key AND uc.scope = l.scope AND uc.metric = l.metric
          RETURNING uc.user_id, uc.period_key, uc.scope, uc.metric, uc.used, uc.granted, uc.forgiven
        )
        SELECT (SELECT coalesce(jsonb_agg(request_id), '[]'::jsonb) FROM ev) AS o_inserted,
               (SELECT count(*) FROM rq) AS o_requests,
               (SELECT coalesce(jsonb_agg(jsonb_build_object('u', user_id, 'p', period_key, 'sc', scope, 'm', metric,
                                                             'used', used, 'granted', granted, 'forgiven', forgiven)),
                                '[]'::jsonb) FROM upd) AS o_counters;
      END
      $fn$`;

/**
 * Gives leases back (`usage_return_leases(ids, before)`) — those named and those expired before `before` (the
 * sweeper's call) — deleting their rows and taking their amounts out of `reserved`, only for rows still
 * there: a lease is released once.
 */
export const RETURN_LEASES_FUNCTION = `
      CREATE OR REPLACE FUNCTION usage_return_leases(p_ids text[], p_before bigint)
      RETURNS TABLE (o_released bigint)
      LANGUAGE plpgsql ${KEYED} AS $fn$
      BEGIN
        RETURN QUERY
        WITH del AS (
          DELETE FROM usage_leases WHERE lease_id = ANY(p_ids) OR expires_at < p_before
          RETURNING user_id, period_key, scope, metric, amount
        ),
        parts AS (
          SELECT user_id, period_key, scope, metric, sum(amount)::int8 AS amount FROM del
          GROUP BY user_id, period_key, scope, metric
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
        SELECT (SELECT count(*) FROM del) AS o_released;
      END
      $fn$`;

/**
 * PostgreSQL only: the shared store's batch statements find what they touch by key, whatever the planner
 * guesses of a batch's size. Settling and giving leases back become functions (they were statements sent
 * as they are), and the admission and lease functions get the same settings. Nothing they decide or write
 * changes.
 */
export class UsageKeyedPlans1765152000000 implements MigrationInterface {
  name = 'UsageKeyedPlans1765152000000';

  async up(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query(SETTLE_BATCH_FUNCTION);
    await q.query(RETURN_LEASES_FUNCTION);
    await q.query(`ALTER FUNCTION usage_reserve_batch(bigint, jsonb) ${KEYED}`);
    await q.query(`ALTER FUNCTION usage_take_leases(bigint, bigint, jsonb) ${KEYED}`);
  }

  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query('ALTER FUNCTION usage_take_leases(bigint, bigint, jsonb) RESET ALL');
    await q.query('ALTER FUNCTION usage_reserve_batch(bigint, jsonb) RESET ALL');
    await q.query('DROP FUNCTION usage_return_leases(text[], bigint)');
    await q.query('DROP FUNCTION usage_settle_batch(json, bigint)');
  }
}
