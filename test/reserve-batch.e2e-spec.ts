import fc from 'fast-check';
import { DataSource } from 'typeorm';
import { USAGE_MIGRATIONS } from '@app/usage-monitoring';
import { USAGE_MIGRATIONS_TABLE } from '@app/usage-monitoring/storage/migrations';
import { createSchema, describePostgres, dropSchema, pgOptions } from './utils/test-store';

interface Charge {
  p: string;
  sc: string;
  m: string;
  a: number;
  x: number;
  e: number;
}
interface Item {
  id: string;
  u: string;
  provider: string;
  pk: string;
  expires: number;
  now: number;
  charges: Charge[];
}

const limitsOf: Record<string, { sc: string; m: string; x: number }[]> = {
  calls: [{ sc: 'openai', m: 'calls', x: 5 }],
  mixed: [
    { sc: 'openai', m: 'calls', x: 8 },
    { sc: 'ai', m: 'tokens', x: 400 },
    { sc: '*', m: 'cost', x: 250 },
  ],
};

/** A batch: requests of a few users (sharing counters), amounts around the limits, zero amounts too. */
const batch = fc
  .array(
    fc.record({
      user: fc.constantFrom('u1', 'u2', 'u3'),
      plan: fc.constantFrom('calls', 'mixed'),
      tokens: fc.integer({ min: 0, max: 150 }),
      cost: fc.integer({ min: 0, max: 90 }),
    }),
    { minLength: 1, maxLength: 40 },
  )
  .map((rs) =>
    rs.map((r, i): Item => ({
      id: `r${i}`,
      u: `${r.user}:${r.plan}`,
      provider: 'openai',
      pk: '2026-11',
      expires: 2_000_000,
      now: 1_000_000,
      charges: limitsOf[r.plan].map((l) => ({
        p: '2026-11',
        sc: l.sc,
        m: l.m,
        a: l.m === 'calls' ? 1 : l.m === 'tokens' ? r.tokens : r.cost,
        x: l.x,
        e: 3_000_000,
      })),
    })),
  );

async function migrated(): Promise<{ ds: DataSource; schema: string }> {
  const schema = await createSchema();
  const ds = new DataSource({
    ...pgOptions(schema),
    migrations: USAGE_MIGRATIONS,
    migrationsTableName: USAGE_MIGRATIONS_TABLE,
  });
  await ds.initialize();
  await ds.runMigrations();
  return { ds, schema };
}

/** Runs two batches (the second sees the first's reservations) and reads back everything they changed. */
async function outcome(ds: DataSource, first: Item[], second: Item[]) {
  await ds.query('TRUNCATE usage_counters, usage_reservations');
  const decide = (items: Item[]) =>
    ds.query<{ o_id: string; o_pass: boolean; o_state: unknown }[]>(
      'SELECT o_id, o_pass, o_state FROM usage_reserve_batch($1, $2::jsonb)',
      [1_000_000, JSON.stringify(items)],
    );
  // A refusal's state names each counter's `granted` and `forgiven` since the admin migration: 0 here
  // (no admin changes), and left out so that the versions before it compare equal.
  const unadjusted = (d: { o_id: string; o_pass: boolean; o_state: unknown }) => ({
    ...d,
    o_state: Array.isArray(d.o_state)
      ? (d.o_state as Record<string, unknown>[]).map(({ granted, forgiven, ...rest }) =>
          (granted ?? 0) === 0 && (forgiven ?? 0) === 0 ? rest : { ...rest, granted, forgiven },
        )
      : d.o_state,
  });
  const decisions = [
    ...(await decide(first)),
    ...(await decide(second.map((i) => ({ ...i, id: `b-${i.id}` })))),
  ].map(unadjusted);
  const counters = await ds.query(
    'SELECT user_id, scope, metric, used::int8::text, reserved::int8::text FROM usage_counters ORDER BY 1, 2, 3',
  );
  const reservations = await ds.query(
    'SELECT request_id, user_id, charges::jsonb AS charges, expires_at::text FROM usage_reservations ORDER BY 1',
  );
  return { decisions, counters, reservations };
}

describePostgres('usage_reserve_batch (PostgreSQL)', () => {
  jest.setTimeout(120_000);

  it('the counter-at-once version decides and writes exactly what the row-per-request version did (property, 60 batch pairs), and reverts to it', async () => {
    const { ds, schema } = await migrated();
    try {
      const runs: { first: Item[]; second: Item[]; now: Awaited<ReturnType<typeof outcome>> }[] = [];
      await fc.assert(
        fc.asyncProperty(batch, batch, async (first, second) => {
          runs.push({ first, second, now: await outcome(ds, first, second) });
        }),
        { numRuns: 60, seed: 20261130 },
      );
      // Some admitted, some refused: the property exercised both branches.
      const passes = runs.flatMap((r) => r.now.decisions.map((d) => d.o_pass));
      expect(passes.filter(Boolean).length).toBeGreaterThan(0);
      expect(passes.filter((p) => !p).length).toBeGreaterThan(0);

      // Revert to the row-per-request version of the function (and the migrations after it: leases, the
      // intent column, whose function decides the same, the alert outbox, the admin adjustments, whose
      // function decides the same without any, shadow limits, the same without any, and the keyed plans'
      // settings, which change no decision) and run the same batches.
      const latest = USAGE_MIGRATIONS.slice(-7).map((m) => new m().name);
      expect(latest).toEqual([
        'UsageReserveBatchInMemory1764547200000',
        'UsageLeases1764633600000',
        'UsageReservationIntent1764806400000',
        'UsageAlertOutbox1764892800000',
        'UsageAdjustments1764979200000',
        'UsageShadowLimits1765065600000',
        'UsageKeyedPlans1765152000000',
      ]);
      for (let i = 0; i < latest.length; i++) await ds.undoLastMigration();
      for (const r of runs) expect(await outcome(ds, r.first, r.second)).toEqual(r.now);
      // And forward again.
      expect((await ds.runMigrations()).map((m) => m.name)).toEqual(latest);
    } finally {
      await ds.destroy();
      await dropSchema(schema);
    }
  });
});
