import type { MigrationInterface, QueryRunner } from 'typeorm';
import { TAKE_LEASES_FUNCTION } from './1764633600000-usage-leases';
import { RESERVE_BATCH_WITH_INTENT } from './1764806400000-usage-reservation-intent';

/** Replaces each `[from, to]` once in `text`, refusing a text that changed under it. */
export function derive(name: string, text: string, edits: [string, string][]): string {
  let out = text;
  for (const [from, to] of edits) {
    if (out.split(from).length !== 2) throw new Error(`${name}: unexpected text`);
    out = out.replace(from, to);
  }
  return out;
}

/**
 * `usage_reserve_batch` deciding against the counter as adjusted: `used + reserved + need <= max + granted
 * + forgiven`, and a refusal's state carries `granted` and `forgiven` (the 429 shows the adjusted limit).
 */
export const RESERVE_BATCH_ADJUSTED = derive('usage_reserve_batch', RESERVE_BATCH_WITH_INTENT, [
  [`        res_0 jsonb;`, `        res_0 jsonb;\n        gr_v jsonb;\n        fg_v jsonb;`],
  [
    `SELECT coalesce(jsonb_object_agg(t.key, t.used), '{}'), coalesce(jsonb_object_agg(t.key, t.reserved), '{}')
        INTO used_v, res_v`,
    `SELECT coalesce(jsonb_object_agg(t.key, t.used), '{}'), coalesce(jsonb_object_agg(t.key, t.reserved), '{}'),
          coalesce(jsonb_object_agg(t.key, t.granted), '{}'), coalesce(jsonb_object_agg(t.key, t.forgiven), '{}')
        INTO used_v, res_v, gr_v, fg_v`,
  ],
  [
    `AS key, uc.used, uc.reserved
          FROM usage_counters uc`,
    `AS key, uc.used, uc.reserved, uc.granted, uc.forgiven
          FROM usage_counters uc`,
  ],
  [
    `greatest((c->>'a')::int8, 1) > (c->>'x')::int8 THEN`,
    `greatest((c->>'a')::int8, 1) > (c->>'x')::int8 + (gr_v->>k)::int8 + (fg_v->>k)::int8 THEN`,
  ],
  [
    `'reserved', res_v->(jsonb_build_array(r->>'u', x.p, x.sc, x.m)::text)))`,
    `'reserved', res_v->(jsonb_build_array(r->>'u', x.p, x.sc, x.m)::text),
                     'granted', gr_v->(jsonb_build_array(r->>'u', x.p, x.sc, x.m)::text),
                     'forgiven', fg_v->(jsonb_build_array(r->>'u', x.p, x.sc, x.m)::text)))`,
  ],
]);

/** `usage_take_leases` granting a lease only while the adjusted counter has room for `headroom` of them. */
export const TAKE_LEASES_ADJUSTED = derive('usage_take_leases', TAKE_LEASES_FUNCTION, [
  [
    `SELECT uc.user_id, uc.period_key, uc.scope, uc.metric, uc.used, uc.reserved
          FROM usage_counters uc`,
    `SELECT uc.user_id, uc.period_key, uc.scope, uc.metric, uc.used, uc.reserved, uc.granted, uc.forgiven
          FROM usage_counters uc`,
  ],
  [`x.want * p_headroom <= x.mx THEN`, `x.want * p_headroom <= x.mx + lk.granted + lk.forgiven THEN`],
]);

/**
 * PostgreSQL only: admin changes (`UsageAdminService`). A counter row gains `granted` (quota added for its
 * period) and `forgiven` (usage a reset took off); admission and leases decide against `max + granted +
 * forgiven`, under the same row lock as every reservation, so a change is atomic with requests in flight.
 * `usage_limit_overrides` holds each user's overridden limits; `usage_adjustments` the audit history of
 * every change (never deleted). The per-user store keeps the same in its admin file; a user's file gets
 * the two columns, always 0.
 */
export class UsageAdjustments1764979200000 implements MigrationInterface {
  name = 'UsageAdjustments1764979200000';

  async up(q: QueryRunner): Promise<void> {
    // The columns exist in a user's file too (the entity is one), always 0 there: the per-user store keeps
    // grants and resets in its admin file. SQLite adds them in place (no table rebuild).
    await q.query('ALTER TABLE usage_counters ADD COLUMN granted bigint NOT NULL DEFAULT 0');
    await q.query('ALTER TABLE usage_counters ADD COLUMN forgiven bigint NOT NULL DEFAULT 0');
    if (q.connection.options.type !== 'postgres') return;
    await q.query(`CREATE TABLE usage_adjustments (
      seq bigserial PRIMARY KEY,
      id varchar(64) NOT NULL UNIQUE,
      user_id varchar(1024) NOT NULL,
      kind varchar(32) NOT NULL,
      scope varchar(128) NOT NULL,
      metric varchar(16) NOT NULL,
      period varchar(16) NOT NULL,
      period_key varchar(40),
      amount bigint,
      max_value bigint,
      until bigint,
      actor varchar(256) NOT NULL,
      reason text NOT NULL,
      created_at bigint NOT NULL
    )`);
    await q.query('CREATE INDEX idx_usage_adjustments_user ON usage_adjustments (user_id, seq)');
    await q.query(`CREATE TABLE usage_limit_overrides (
      user_id varchar(1024) NOT NULL,
      scope varchar(128) NOT NULL,
      metric varchar(16) NOT NULL,
      period varchar(16) NOT NULL,
      max_value bigint NOT NULL,
      until bigint,
      PRIMARY KEY (user_id, scope, metric, period)
    )`);
    await q.query(RESERVE_BATCH_ADJUSTED);
    await q.query(TAKE_LEASES_ADJUSTED);
  }

  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type === 'postgres') {
      await q.query(RESERVE_BATCH_WITH_INTENT);
      await q.query(TAKE_LEASES_FUNCTION);
      await q.query('DROP TABLE usage_limit_overrides');
      await q.query('DROP TABLE usage_adjustments');
    }
    await q.query('ALTER TABLE usage_counters DROP COLUMN forgiven');
    await q.query('ALTER TABLE usage_counters DROP COLUMN granted');
  }
}
