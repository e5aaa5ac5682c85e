import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * PostgreSQL only: `usage_reserve_batch(now, requests)` decides many admissions in one statement. It
 * creates missing counter rows and locks every counter row involved in one order (no deadlocks), then
 * walks the requests in order: each is admitted only if all of its limits pass (`used + reserved +
 * need <= max`), and then adds to `reserved` and records its reservation. One commit for the batch.
 */
export class UsageSharedBatches1764374400000 implements MigrationInterface {
  name = 'UsageSharedBatches1764374400000';

  async up(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query(`
      CREATE OR REPLACE FUNCTION usage_reserve_batch(p_now bigint, p_requests jsonb)
      RETURNS TABLE (o_id text, o_pass boolean, o_state jsonb)
      LANGUAGE plpgsql AS $fn$
      DECLARE
        r jsonb;
        ok boolean;
      BEGIN
        INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
        SELECT DISTINCT x.u, c.p, c.sc, c.m, 0::int8, 0::int8, c.e, p_now
        FROM jsonb_to_recordset(p_requests) AS x(u text, charges jsonb)
        CROSS JOIN LATERAL jsonb_to_recordset(x.charges) AS c(p text, sc text, m text, e bigint)
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (user_id, period_key, scope, metric) DO NOTHING;

        PERFORM 1
        FROM usage_counters uc
        JOIN (
          SELECT DISTINCT x.u, c.p, c.sc, c.m
          FROM jsonb_to_recordset(p_requests) AS x(u text, charges jsonb)
          CROSS JOIN LATERAL jsonb_to_recordset(x.charges) AS c(p text, sc text, m text)
        ) k ON uc.user_id = k.u AND uc.period_key = k.p AND uc.scope = k.sc AND uc.metric = k.m
        ORDER BY uc.user_id, uc.period_key, uc.scope, uc.metric
        FOR UPDATE OF uc;

        FOR r IN SELECT value FROM jsonb_array_elements(p_requests) LOOP
          SELECT coalesce(bool_and(uc.used + uc.reserved + greatest(c.a, 1) <= c.x), true)
          INTO ok
          FROM jsonb_to_recordset(r->'charges') AS c(p text, sc text, m text, a bigint, x bigint)
          JOIN usage_counters uc
            ON uc.user_id = r->>'u' AND uc.period_key = c.p AND uc.scope = c.sc AND uc.metric = c.m;
          IF ok THEN
            UPDATE usage_counters uc
            SET reserved = uc.reserved + c.a, updated_at = p_now
            FROM jsonb_to_recordset(r->'charges') AS c(p text, sc text, m text, a bigint)
            WHERE uc.user_id = r->>'u' AND uc.period_key = c.p AND uc.scope = c.sc AND uc.metric = c.m;
            INSERT INTO usage_reservations (request_id, user_id, provider, period_key, charges, status, created_at, expires_at)
            VALUES (r->>'id', r->>'u', r->>'provider', r->>'pk', (r->'charges')::text, 'open', p_now, (r->>'expires')::bigint);
            o_state := NULL;
          ELSE
            SELECT jsonb_agg(jsonb_build_object('p', uc.period_key, 'sc', uc.scope, 'm', uc.metric,
                                                'used', uc.used, 'reserved', uc.reserved))
            INTO o_state
            FROM jsonb_to_recordset(r->'charges') AS c(p text, sc text, m text)
            JOIN usage_counters uc
              ON uc.user_id = r->>'u' AND uc.period_key = c.p AND uc.scope = c.sc AND uc.metric = c.m;
          END IF;
          o_id := r->>'id';
          o_pass := ok;
          RETURN NEXT;
        END LOOP;
      END
      $fn$`);
  }

  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query('DROP FUNCTION IF EXISTS usage_reserve_batch(bigint, jsonb)');
  }
}
