import { DataSource, type QueryRunner } from 'typeorm';
import { USAGE_MIGRATIONS } from '@app/usage-monitoring';
import { USAGE_MIGRATIONS_TABLE } from '@app/usage-monitoring/storage/migrations';
import * as SQL from '@app/usage-monitoring/storage/shared/postgres-statements';
import { createSchema, describePostgres, dropSchema, pgOptions } from './utils/test-store';

/** Counter rows of other users in the table while one user's batches run. */
const OTHER_USERS = 1_000;
const PERIOD = 'month:2026-12-01';
const KEYS = [
  { sc: '*', m: 'cost' },
  { sc: 'ai_text', m: 'calls' },
  { sc: 'ai_text', m: 'tokens' },
];

interface Reads {
  seq_scan: number;
  seq_tup_read: number;
  idx_tup_fetch: number;
}

/**
 * The shared store's batch statements find one user's counters by key, however many other counters the
 * table holds: a batch of one user reads its own 3 counters, not the other 3,000. Before the `UsageKeyedPlans`
 * migration each of these calls read all 3,003 (admission twice), with the table analyzed or not: the planner
 * takes a batch's JSON for 100 rows (10,000 for the charges inside it) and hashes the whole counter table.
 */
describePostgres('batch statements by key (PostgreSQL)', () => {
  jest.setTimeout(60_000);
  let ds: DataSource;
  let schema: string;

  beforeAll(async () => {
    schema = await createSchema();
    ds = new DataSource({
      ...pgOptions(schema),
      migrations: USAGE_MIGRATIONS,
      migrationsTableName: USAGE_MIGRATIONS_TABLE,
    });
    await ds.initialize();
    await ds.runMigrations();
    await ds.query(
      `INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
       SELECT 'other-' || u, $1, k.sc, k.m, 5, 0, 3000000000000, 0
       FROM generate_series(1, ${OTHER_USERS}) AS u
       CROSS JOIN (VALUES ('*', 'cost'), ('ai_text', 'calls'), ('ai_text', 'tokens')) AS k(sc, m)`,
      [PERIOD],
    );
  });
  afterAll(async () => {
    await ds?.destroy();
    if (schema) await dropSchema(schema);
  });

  /** What this session has read of `usage_counters` and not yet reported (PostgreSQL flushes it when idle). */
  async function counterReads(qr: QueryRunner): Promise<Reads> {
    const [r] = (await qr.query(
      `SELECT coalesce(seq_scan, 0)::int AS seq_scan, coalesce(seq_tup_read, 0)::int AS seq_tup_read,
         coalesce(idx_tup_fetch, 0)::int AS idx_tup_fetch
       FROM pg_stat_xact_user_tables WHERE schemaname = $1 AND relname = 'usage_counters'`,
      [schema],
    )) as Reads[];
    return r;
  }

  /** Runs `sql` in its own transaction and returns what it read of `usage_counters`, with its rows. */
  async function reads(
    sql: string,
    params: unknown[],
  ): Promise<{ reads: Reads; rows: Record<string, unknown>[] }> {
    const qr = ds.createQueryRunner();
    await qr.connect();
    try {
      await qr.startTransaction();
      const before = await counterReads(qr);
      const rows = (await qr.query(sql, params)) as Record<string, unknown>[];
      const after = await counterReads(qr);
      await qr.commitTransaction();
      return {
        reads: {
          seq_scan: after.seq_scan - before.seq_scan,
          seq_tup_read: after.seq_tup_read - before.seq_tup_read,
          idx_tup_fetch: after.idx_tup_fetch - before.idx_tup_fetch,
        },
        rows,
      };
    } catch (e) {
      if (qr.isTransactionActive) await qr.rollbackTransaction();
      throw e;
    } finally {
      await qr.release();
    }
  }

  const charges = (a: number) =>
    KEYS.map((k) => ({ p: PERIOD, sc: k.sc, m: k.m, a, x: 1_000_000, e: 3_000_000_000_000 }));

  it('admits, leases, settles and gives leases back reading only the batch user’s 3 counters, call after call (past the plan cache’s 5 custom plans), before and after ANALYZE', async () => {
    const seen: Record<string, Reads[]> = { reserve: [], take: [], settle: [], giveBack: [] };
    for (const analyzed of [false, true]) {
      if (analyzed) await ds.query('ANALYZE usage_counters');
      for (let i = 0; i < 8; i++) {
        const id = `${analyzed ? 'a' : 'n'}${i}`;
        const reserve = await reads(SQL.RESERVE_BATCH, [
          1_000,
          JSON.stringify(
            [1, 2].map((n) => ({
              id: `${id}-r${n}`,
              u: 'me',
              provider: 'openai',
              pk: PERIOD,
              expires: 2_000,
              charges: charges(1),
            })),
          ),
        ]);
        expect(reserve.rows.map((r) => r.o_pass)).toEqual([true, true]);
        seen.reserve.push(reserve.reads);

        const take = await reads(SQL.TAKE_LEASES, [
          1_000,
          2,
          JSON.stringify(
            KEYS.map((k) => ({
              id: `${id}-l-${k.sc}-${k.m}`,
              u: 'me',
              p: PERIOD,
              sc: k.sc,
              m: k.m,
              mx: 1_000_000,
              want: 10,
              exp: 2_000,
              e: 3_000_000_000_000,
            })),
          ),
        ]);
        expect(take.rows.map((r) => Number(r.o_amount))).toEqual([10, 10, 10]);
        seen.take.push(take.reads);

        const settle = await reads(SQL.SETTLE_BATCH, [
          JSON.stringify(
            [1, 2].map((n) => ({
              id: `${id}-r${n}`,
              u: 'me',
              provider: 'openai',
              model: 'gpt-4o-mini',
              endpoint: '/chat',
              method: 'POST',
              status: 200,
              it: 3,
              ot: 4,
              cost: 1,
              rt: 5,
              rqb: 10,
              rsb: 20,
              se: 0,
              im: 0,
              pa: 0,
              est: false,
              outcome: 'ok',
              pk: PERIOD,
              at: 1_500,
              cit: 0,
              cwt: 0,
              rst: 0,
              charges: KEYS.map((k) => ({ p: PERIOD, sc: k.sc, m: k.m, a: 1, act: 1 })),
            })),
          ),
          1_500,
        ]);
        expect(settle.rows[0].inserted).toEqual([`${id}-r1`, `${id}-r2`]);
        expect(Number(settle.rows[0].requests)).toBe(2);
        seen.settle.push(settle.reads);

        const giveBack = await reads(SQL.RETURN_LEASES, [KEYS.map((k) => `${id}-l-${k.sc}-${k.m}`), 0]);
        expect(Number(giveBack.rows[0].released)).toBe(3);
        seen.giveBack.push(giveBack.reads);
      }
    }
    // Each call fetches the user's 3 counters through the index (twice over for a read then a write), never
    // the other users' 3,000.
    for (const [call, all] of Object.entries(seen)) {
      for (const r of all) {
        expect({ call, seq: r.seq_tup_read }).toEqual({ call, seq: 0 });
        expect({ call, fetched: r.idx_tup_fetch <= 12 }).toEqual({ call, fetched: true });
      }
    }
    // And what they wrote adds up: 16 × 2 requests of 1 on each counter, nothing left reserved.
    const mine = await ds.query<{ scope: string; metric: string; used: number; reserved: number }[]>(
      `SELECT scope, metric, used::int AS used, reserved::int AS reserved FROM usage_counters
       WHERE user_id = 'me' ORDER BY scope, metric`,
    );
    expect(mine).toEqual(KEYS.map((k) => ({ scope: k.sc, metric: k.m, used: 32, reserved: 0 })));
  });
});
