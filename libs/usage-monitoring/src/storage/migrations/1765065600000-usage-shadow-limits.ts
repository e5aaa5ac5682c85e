import type { MigrationInterface, QueryRunner } from 'typeorm';
import { derive, RESERVE_BATCH_ADJUSTED } from './1764979200000-usage-adjustments';

/**
 * `usage_reserve_batch` checking each charge's shadow limit (`sx`, `Limit.mode: 'shadow'`) once the
 * request is admitted, against the counter as it was before the request: an admitted request's `o_state`
 * is the shadow limit that would have refused it (`[{ p, sc, m, used, reserved, granted, forgiven }]`), or
 * null. Decisions are unchanged.
 */
export const RESERVE_BATCH_SHADOW = derive('usage_reserve_batch', RESERVE_BATCH_ADJUSTED, [
  [`        gr_v jsonb;`, `        gr_v jsonb;\n        sh jsonb;`],
  [
    `          IF ok THEN
            FOR c IN`,
    `          IF ok THEN
            sh := NULL;
            FOR c IN SELECT value FROM jsonb_array_elements(r->'charges') LOOP
              k := jsonb_build_array(r->>'u', c->>'p', c->>'sc', c->>'m')::text;
              IF sh IS NULL AND c ? 'sx' AND (used_v->>k)::int8 + (res_v->>k)::int8 + greatest((c->>'a')::int8, 1)
                  > (c->>'sx')::int8 + (gr_v->>k)::int8 + (fg_v->>k)::int8 THEN
                sh := jsonb_build_array(jsonb_build_object('p', c->>'p', 'sc', c->>'sc', 'm', c->>'m',
                  'used', used_v->k, 'reserved', res_v->k, 'granted', gr_v->k, 'forgiven', fg_v->k));
              END IF;
            END LOOP;
            FOR c IN`,
  ],
  [`            o_state := NULL;`, `            o_state := sh;`],
]);

/**
 * Shadow limits (`Limit.mode: 'shadow'`): the ledger row's `shadow_refused` names the shadow limit that
 * would have refused the request (both stores); on PostgreSQL, `usage_reserve_batch` reports it.
 */
export class UsageShadowLimits1765065600000 implements MigrationInterface {
  name = 'UsageShadowLimits1765065600000';

  async up(q: QueryRunner): Promise<void> {
    await q.query('ALTER TABLE usage_events ADD COLUMN shadow_refused varchar(160)');
    if (q.connection.options.type === 'postgres') await q.query(RESERVE_BATCH_SHADOW);
  }

  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type === 'postgres') await q.query(RESERVE_BATCH_ADJUSTED);
    await q.query('ALTER TABLE usage_events DROP COLUMN shadow_refused');
  }
}
