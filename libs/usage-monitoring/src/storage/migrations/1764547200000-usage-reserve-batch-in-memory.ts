import type { MigrationInterface, QueryRunner } from 'typeorm';
import { UsageSharedBatches1764374400000 } from './1764374400000-usage-shared-batches';

/** The function this migration installs (a later migration derives its successor from it). */
export const RESERVE_BATCH_IN_MEMORY = `
      CREATE OR REPLACE FUNCTION usage_reserve_batch(p_now bigint, p_requests jsonb)
      RETURNS TABLE (o_id text, o_pass boolean, o_state jsonb)
      LANGUAGE plpgsql AS $fn$
      DECLARE
        r jsonb;
        c jsonb;
        k text;
        ok boolean;
        used_v jsonb;
        res_v jsonb;
        res_0 jsonb;
        admitted text[] := '{}';
      BEGIN
        INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
        SELECT DISTINCT x.u, c.p, c.sc, c.m, 0::int8, 0::int8, c.e, p_now
        FROM jsonb_to_recordset(p_requests) AS x(u text, charges jsonb)
        CROSS JOIN LATERAL jsonb_to_recordset(x.charges) AS c(p text, sc text, m text, e bigint)
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (user_id, period_key, scope, metric) DO NOTHING;

        -- Lock every counter involved, in one order (no deadlocks), and read them once. A counter's key is
        -- the JSON text of [user, period, scope, metric]: unambiguous whatever the strings hold.
        SELECT coalesce(jsonb_object_agg(t.key, t.used), '{}'), coalesce(jsonb_object_agg(t.key, t.reserved), '{}')
        INTO used_v, res_v
        FROM (
          SELECT jsonb_build_array(uc.user_id, uc.period_key, uc.scope, uc.metric)::text AS key, uc.used, uc.reserved
          FROM usage_counters uc
          JOIN (
            SELECT DISTINCT x.u, c.p, c.sc, c.m
            FROM jsonb_to_recordset(p_requests) AS x(u text, charges jsonb)
            CROSS JOIN LATERAL jsonb_to_recordset(x.charges) AS c(p text, sc text, m text)
          ) w ON uc.user_id = w.u AND uc.period_key = w.p AND uc.scope = w.sc AND uc.metric = w.m
          ORDER BY uc.user_id, uc.period_key, uc.scope, uc.metric
          FOR UPDATE OF uc
        ) t;
        res_0 := res_v;

        FOR r IN SELECT value FROM jsonb_array_elements(p_requests) LOOP
          ok := true;
          FOR c IN SELECT value FROM jsonb_array_elements(r->'charges') LOOP
            k := jsonb_build_array(r->>'u', c->>'p', c->>'sc', c->>'m')::text;
            IF (used_v->>k)::int8 + (res_v->>k)::int8 + greatest((c->>'a')::int8, 1) > (c->>'x')::int8 THEN
              ok := false;
              EXIT;
            END IF;
          END LOOP;
          IF ok THEN
            FOR c IN SELECT value FROM jsonb_array_elements(r->'charges') LOOP
              k := jsonb_build_array(r->>'u', c->>'p', c->>'sc', c->>'m')::text;
              res_v := jsonb_set(res_v, ARRAY[k], to_jsonb((res_v->>k)::int8 + (c->>'a')::int8));
            END LOOP;
            admitted := admitted || (r->>'id');
            o_state := NULL;
          ELSE
            SELECT jsonb_agg(jsonb_build_object('p', x.p, 'sc', x.sc, 'm', x.m,
                     'used', used_v->(jsonb_build_array(r->>'u', x.p, x.sc, x.m)::text),
                     'reserved', res_v->(jsonb_build_array(r->>'u', x.p, x.sc, x.m)::text)))
            INTO o_state
            FROM jsonb_to_recordset(r->'charges') AS x(p text, sc text, m text);
          END IF;
          o_id := r->>'id';
          o_pass := ok;
          RETURN NEXT;
        END LOOP;

        UPDATE usage_counters uc
        SET reserved = ch.reserved, updated_at = p_now
        FROM (
          SELECT e.key::jsonb->>0 AS u, e.key::jsonb->>1 AS p, e.key::jsonb->>2 AS sc, e.key::jsonb->>3 AS m,
            e.value::int8 AS reserved
          FROM jsonb_each_text(res_v) AS e(key, value)
          WHERE e.value IS DISTINCT FROM res_0->>e.key
        ) ch
        WHERE uc.user_id = ch.u AND uc.period_key = ch.p AND uc.scope = ch.sc AND uc.metric = ch.m;

        INSERT INTO usage_reservations (request_id, user_id, provider, period_key, charges, status, created_at, expires_at)
        SELECT x.id, x.u, x.provider, x.pk, x.charges::text, 'open', p_now, x.expires
        FROM jsonb_to_recordset(p_requests) AS x(id text, u text, provider text, pk text, charges jsonb, expires bigint)
        WHERE x.id = ANY(admitted);
      END
      $fn$`;

/**
 * PostgreSQL only: `usage_reserve_batch` decides a batch's admissions against the counter values it read
 * (and locked) once, then writes each counter once and the batch's reservation rows in one INSERT. The
 * version it replaces updated the counter rows once per admitted request: a batch of 25 requests of one
 * user with three limits wrote 75 row versions where this writes 3. Same contract and same decisions:
 * requests in order, each admitted only if all of its limits pass (`used + reserved + max(need, 1) <= max`).
 */
export class UsageReserveBatchInMemory1764547200000 implements MigrationInterface {
  name = 'UsageReserveBatchInMemory1764547200000';

  async up(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query(RESERVE_BATCH_IN_MEMORY);
  }

  /** Back to the row-per-request version of `UsageSharedBatches1764374400000`. */
  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await new UsageSharedBatches1764374400000().up(q);
  }
}
