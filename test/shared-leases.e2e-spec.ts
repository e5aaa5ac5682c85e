import { Test } from '@nestjs/testing';
import request from 'supertest';
import { UsageMonitoringModule, type Plan } from '@app/usage-monitoring';
import type { LimitCharge } from '@app/usage-monitoring/storage/usage-store.interface';
import { SharedPostgresStore } from '@app/usage-monitoring/storage/shared/shared-postgres.store';
import { createTestApp, TEST_PLANS } from './utils/create-test-app';
import { spawnServer, type ServerProcess } from './utils/spawn-server';
import { bearer } from './utils/test-controllers';
import { createSchema, describePostgres, dropSchema, pgOptions, sql } from './utils/test-store';

const chat = () => ({ messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 });
const ROOMY: Plan = {
  name: 'roomy',
  limits: [
    { metric: 'calls', scope: 'openai', period: 'month', max: 100_000 },
    { metric: 'cost', scope: '*', period: 'month', max: 1_000 },
  ],
};
const PLANS = [...TEST_PLANS, ROOMY];

function tally(codes: number[]): Record<number, number> {
  const t: Record<number, number> = {};
  for (const c of codes) t[c] = (t[c] ?? 0) + 1;
  return t;
}

const post = (url: string, user: string) =>
  request(url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat());

/** The user's counter of calls this month: `[{ used, reserved }]`. */
const callsCounter = (schema: string, user: string) =>
  sql(schema, "SELECT used, reserved FROM usage_counters WHERE user_id = $1 AND metric = 'calls'", [user]);

/** Polls until `check` holds (or fails with its last value after `ms`). */
async function eventually<T>(read: () => Promise<T>, check: (v: T) => boolean, ms = 5_000): Promise<T> {
  const until = Date.now() + ms;
  let v = await read();
  while (!check(v) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 50));
    v = await read();
  }
  return v;
}

describePostgres('shared PostgreSQL store with per-instance leases (storage.leases)', () => {
  jest.setTimeout(90_000);

  it('200 parallel requests on a roomy plan: admitted from a few leases, one ledger row each, the leases given back after holdMs', async () => {
    const schema = await createSchema();
    const t = await createTestApp({
      store: 'postgres',
      schema,
      usage: { plans: PLANS, enforcementTimeoutMs: 5_000 },
      shared: { leases: { requests: 32, holdMs: 1_000 } },
    });
    const user = 'plan=roomy;leaseholder';
    try {
      const results = await Promise.all(Array.from({ length: 200 }, () => post(t.url, user)));
      expect(tally(results.map((r) => r.status))).toEqual({ 200: 200 });
      // Right after the burst the instance still holds leases: their amounts are in `reserved`.
      const held = await sql<{ n: number; calls: string }>(
        schema,
        "SELECT COUNT(*)::int AS n, SUM(amount) FILTER (WHERE metric = 'calls') AS calls FROM usage_leases",
      );
      expect(held[0].n).toBeGreaterThan(0);
      // Every lease of calls is 32 requests' worth (one call each).
      expect(Number(held[0].calls) % 32).toBe(0);
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_reservations')).toEqual([{ n: 0 }]);
      // Once held for holdMs they go back: nothing reserved, usage equal to the ledger.
      const after = await eventually(
        () =>
          sql(
            schema,
            "SELECT used, reserved, (SELECT COUNT(*)::int FROM usage_leases) AS leases FROM usage_counters WHERE user_id = $1 AND metric = 'calls'",
            [user],
          ),
        (rows) => rows[0]?.leases === 0,
      );
      expect(after).toEqual([{ used: 200, reserved: 0, leases: 0 }]);
      const [cost] = await sql<{ used: number; ledger: number; reserved: number }>(
        schema,
        `SELECT c.used, c.reserved, (SELECT SUM(cost_micros)::int8 FROM usage_events WHERE user_id = $1) AS ledger
         FROM usage_counters c WHERE c.user_id = $1 AND c.metric = 'cost'`,
        [user],
      );
      expect(cost.reserved).toBe(0);
      expect(Number(cost.used)).toBe(Number(cost.ledger));
      expect(
        await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_events WHERE user_id = $1', [user]),
      ).toEqual([{ n: 200 }]);
    } finally {
      await t.close();
      await dropSchema(schema);
    }
  });

  it("requests admitted from a lease in one turn go on together, in that turn's check phase", async () => {
    const schema = await createSchema();
    const t = await createTestApp({
      store: 'postgres',
      schema,
      usage: { plans: PLANS, enforcementTimeoutMs: 5_000 },
      shared: { leases: { requests: 32, holdMs: 60_000 } },
    });
    try {
      const store = t.probe.store as SharedPostgresStore;
      const now = Date.now();
      // This month's window (UTC), whenever the test runs.
      const d = new Date(now);
      const periodStart = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
      const calls: LimitCharge = {
        limitId: 'openai:calls:month',
        scope: 'openai',
        metric: 'calls',
        period: 'month',
        periodKey: `month:${new Date(periodStart).toISOString().slice(0, 10)}`,
        periodStart,
        periodEnd: Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1),
        max: 100_000,
        amount: 1,
      };
      const reserve = (requestId: string) =>
        store.reserve({ requestId, userId: 'in-turn', provider: 'openai', charges: [calls], now });
      // The first takes a lease (a statement); the three after it are admitted from it in memory.
      expect((await reserve('r0')).admitted).toBe(true);
      const order: string[] = [];
      const admissions = ['r1', 'r2', 'r3'].map((id) =>
        reserve(id).then((r) => order.push(r.admitted ? id : `${id} refused`)),
      );
      queueMicrotask(() => order.push('microtask'));
      setImmediate(() => order.push('check phase, queued after them'));
      await Promise.all(admissions);
      await new Promise((r) => setImmediate(r));
      // Not in a microtask of the turn they were asked in, each on its own: all three, after it, together.
      expect(order).toEqual(['microtask', 'r1', 'r2', 'r3', 'check phase, queued after them']);
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_leases')).toEqual([{ n: 1 }]);
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_reservations')).toEqual([{ n: 0 }]);
    } finally {
      await t.close();
      await dropSchema(schema);
    }
  });

  it('two processes near a limit: never past it, and exactly the limit once the leases went back', async () => {
    const schema = await createSchema();
    let servers: ServerProcess[] = [];
    try {
      // Leases of 4 calls while 8 × 4 calls are left: the burst below starts on leases and ends on the
      // per-request statement.
      const env = {
        USAGE_TEST_SCHEMA: schema,
        USAGE_TEST_ENFORCEMENT_TIMEOUT_MS: '5000',
        USAGE_TEST_LEASES: JSON.stringify({ requests: 4, holdMs: 300 }),
      };
      servers = await Promise.all([spawnServer(env), spawnServer(env)]);
      const user = 'plan=hundred;two-leaseholders';
      const burst = await Promise.all(Array.from({ length: 300 }, (_, i) => post(servers[i % 2].url, user)));
      const first = tally(burst.map((r) => r.status));
      expect(Object.keys(first).sort()).toEqual(['200', '429']);
      expect(first[200]).toBeLessThanOrEqual(100);
      // Leases still held at the end of the burst hold quota back; after holdMs they are returned and the
      // rest of the 100 calls can be spent, one request at a time, alternating instances.
      await new Promise((r) => setTimeout(r, 600));
      let more = 0;
      for (let i = 0; i < 200; i++) {
        const r = await post(servers[i % 2].url, user);
        if (r.status === 200) more++;
        else if (r.status === 429) {
          const other = await post(servers[(i + 1) % 2].url, user);
          expect(other.status).toBe(429);
          break;
        } else throw new Error(`unexpected ${r.status}`);
      }
      expect(first[200] + more).toBe(100);
      await new Promise((r) => setTimeout(r, 600));
      expect(await callsCounter(schema, user)).toEqual([{ used: 100, reserved: 0 }]);
      expect(
        await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_events WHERE user_id = $1', [user]),
      ).toEqual([{ n: 100 }]);
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_leases')).toEqual([{ n: 0 }]);
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_reservations')).toEqual([{ n: 0 }]);
      // Both paths ran: leases while there was room, the per-request statement near the limit. (A backend
      // publishes its statistics when it exits, so the servers stop first.)
      await Promise.all(servers.map((s) => s.stop()));
      const stats = await eventually(
        () =>
          sql<{ relname: string; n: number }>(
            schema,
            `SELECT relname, n_tup_ins::int AS n FROM pg_stat_user_tables
             WHERE schemaname = current_schema() AND relname IN ('usage_leases', 'usage_reservations') ORDER BY relname`,
          ),
        (rows) => rows.length === 2 && rows.every((r) => r.n > 0),
      );
      expect(stats.map((r) => r.relname)).toEqual(['usage_leases', 'usage_reservations']);
      expect(stats.every((r) => r.n > 0)).toBe(true);
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
      await dropSchema(schema);
    }
  });

  it('releases, once, the leases of an instance killed while holding them; a graceful stop gives them back', async () => {
    const schema = await createSchema();
    const env = {
      USAGE_TEST_SCHEMA: schema,
      USAGE_TEST_LEASES: JSON.stringify({ requests: 10, holdMs: 60_000 }),
    };
    const server = await spawnServer(env);
    try {
      const known = 'plan=big;killed';
      expect((await post(server.url, known)).status).toBe(200);
      const leases = await sql<{ metric: string; amount: string }>(
        schema,
        'SELECT metric, amount FROM usage_leases WHERE user_id = $1 ORDER BY metric',
        [known],
      );
      expect(leases.map((l) => [l.metric, Number(l.amount)])).toEqual([['calls', 10]]);
      await server.stop('SIGKILL');
      expect(await callsCounter(schema, known)).toEqual([{ used: 1, reserved: 10 }]);
      const t = await createTestApp({ store: 'postgres', schema, usage: { plans: PLANS } });
      try {
        const store = t.probe.store as SharedPostgresStore;
        expect(await store.sweep(Date.now())).toBe(0); // not expired yet (reservationTtlMs, 15 minutes)
        expect(await store.sweep(Date.now() + 16 * 60_000)).toBe(1);
        expect(await store.sweep(Date.now() + 16 * 60_000)).toBe(0);
        expect(await callsCounter(schema, known)).toEqual([{ used: 1, reserved: 0 }]);
      } finally {
        await t.close();
      }
      // A graceful stop (SIGTERM) gives leases back at once, however long they could still be held.
      const again = await spawnServer(env);
      expect((await post(again.url, known)).status).toBe(200);
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_leases')).toEqual([{ n: 1 }]);
      await again.stop('SIGTERM');
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_leases')).toEqual([{ n: 0 }]);
      expect(await callsCounter(schema, known)).toEqual([{ used: 2, reserved: 0 }]);
    } finally {
      await server.stop('SIGKILL');
      await dropSchema(schema);
    }
  });

  it('refuses bad lease options at start-up, naming the option', async () => {
    const build = (leases: unknown) =>
      Test.createTestingModule({
        imports: [
          UsageMonitoringModule.forRoot({
            plans: TEST_PLANS,
            storage: { type: 'shared', dataSource: pgOptions('public'), leases: leases as never },
          }),
        ],
      }).compile();
    await expect(build({ requests: 1 })).rejects.toThrow(
      'storage.leases.requests must be an integer ≥ 2 (got 1)',
    );
    await expect(build({ holdMs: 'soon' })).rejects.toThrow(
      'storage.leases.holdMs must be an integer ≥ 10 (got "soon")',
    );
    await expect(build({ size: 10 })).rejects.toThrow('storage.leases.size is not an option');
    await expect(build({ holdMs: 500_000 })).rejects.toThrow(
      'storage.leases.holdMs (500000) must be at most half of storage.reservationTtlMs (900000)',
    );
    await expect(build('yes')).rejects.toThrow(
      'storage.leases must be true, false or { requests, holdMs, headroom }',
    );
  });
});
