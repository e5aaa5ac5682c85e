import type { MigrationInterface, QueryRunner } from 'typeorm';

/** The function this migration installs (a later migration derives its successor from it). */
export const TAKE_LEASES_FUNCTION = `
      CREATE OR REPLACE FUNCTION usage_take_leases(p_now bigint, p_headroom bigint, p_leases jsonb)
      RETURNS TABLE (o_id text, o_amount bigint)
      LANGUAGE plpgsql AS $fn$
      BEGIN
        INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
        SELECT DISTINCT x.u, x.p, x.sc, x.m, 0::int8, 0::int8, x.e, p_now
        FROM jsonb_to_recordset(p_leases) AS x(u text, p text, sc text, m text, e bigint)
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (user_id, period_key, scope, metric) DO NOTHING;

        RETURN QUERY
        WITH x AS (
          SELECT * FROM jsonb_to_recordset(p_leases)
            AS x(id text, u text, p text, sc text, m text, mx bigint, want bigint, exp bigint)
        ),
        lk AS (
          SELECT uc.user_id, uc.period_key, uc.scope, uc.metric, uc.used, uc.reserved
          FROM usage_counters uc
          JOIN (SELECT DISTINCT u, p, sc, m FROM x) w
            ON uc.user_id = w.u AND uc.period_key = w.p AND uc.scope = w.sc AND uc.metric = w.m
          ORDER BY uc.user_id, uc.period_key, uc.scope, uc.metric
          FOR UPDATE OF uc
        ),
        g AS (
          SELECT x.id, x.u, x.p, x.sc, x.m, x.exp,
            CASE WHEN x.want > 0 AND lk.used + lk.reserved + x.want * p_headroom <= x.mx THEN x.want ELSE 0 END
              AS amount
          FROM x JOIN lk ON lk.user_id = x.u AND lk.period_key = x.p AND lk.scope = x.sc AND lk.metric = x.m
        ),
        upd AS (
          -- Summed per counter: two asks on one counter (limits of equal scope, metric and period) both
          -- count. Each was checked against the values before the batch, and with a headroom of at least 2
          -- the two together still fit.
          UPDATE usage_counters uc
          SET reserved = uc.reserved + s.amount, updated_at = p_now
          FROM (SELECT u, p, sc, m, sum(amount)::int8 AS amount FROM g WHERE amount > 0 GROUP BY u, p, sc, m) s
          WHERE uc.user_id = s.u AND uc.period_key = s.p AND uc.scope = s.sc AND uc.metric = s.m
          RETURNING 1
        ),
        ins AS (
          INSERT INTO usage_leases (lease_id, user_id, period_key, scope, metric, amount, created_at, expires_at)
          SELECT g.id, g.u, g.p, g.sc, g.m, g.amount, p_now, g.exp FROM g WHERE g.amount > 0
          RETURNING 1
        )
        SELECT g.id::text, g.amount::int8 FROM g;
      END
      $fn$`;

/**
 * PostgreSQL only: per-instance leases (`storage.leases`). A lease is a block of one counter's quota
 * added to its `reserved` in one statement; the instance admits requests from the block in memory and
 * gives the block back (`reserved -= amount`, the row deleted) once its requests have settled. Rows of an
 * instance that died are released by the sweeper after `expires_at`, once each.
 *
 * `usage_take_leases(now, headroom, leases)` grants each asked lease whole or not at all: only while the
 * counter still has room for `headroom` such leases (`used + reserved + want × headroom <= max`), so near a
 * limit every request is decided by `usage_reserve_batch` instead. Counters are locked in the same
 * (user, period, scope, metric) order as admission and settlement.
 */
export class UsageLeases1764633600000 implements MigrationInterface {
  name = 'UsageLeases1764633600000';

  async up(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query(`
      CREATE TABLE usage_leases (
        lease_id varchar(64) PRIMARY KEY,
        user_id varchar(1024) NOT NULL,
        period_key varchar(40) NOT NULL,
        scope varchar(128) NOT NULL,
        metric varchar(16) NOT NULL,
        amount bigint NOT NULL,
        created_at bigint NOT NULL,
        expires_at bigint NOT NULL
      )`);
    await q.query('CREATE INDEX idx_usage_leases_expires ON usage_leases (expires_at)');
    await q.query(TAKE_LEASES_FUNCTION);
  }

  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query('DROP FUNCTION IF EXISTS usage_take_leases(bigint, bigint, jsonb)');
    await q.query('DROP TABLE IF EXISTS usage_leases');
  }
}
