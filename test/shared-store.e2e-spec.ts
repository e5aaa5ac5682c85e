import request from 'supertest';
import { UsageService, type Plan } from '@app/usage-monitoring';
import { EMERGENCY_FAIL_OPEN_ENV } from '@app/usage-monitoring/usage-monitoring.constants';
import { SharedPostgresStore } from '@app/usage-monitoring/storage/shared/shared-postgres.store';
import { createTestApp, TEST_PLANS } from './utils/create-test-app';
import { spawnServer, type ServerProcess } from './utils/spawn-server';
import { TcpProxy } from './utils/tcp-proxy';
import { bearer } from './utils/test-controllers';
import { createSchema, describePostgres, dropSchema, PG, sql } from './utils/test-store';

const chat = (extra: object = {}) => ({
  messages: [{ role: 'user', content: 'hello there' }],
  max_tokens: 20,
  ...extra,
});
const EXPECTED_503 = {
  error: 'Usage limit enforcement unavailable',
  message: 'Unable to validate usage limits right now. Please retry shortly.',
  code: 'USAGE_LIMIT_ENFORCEMENT_UNAVAILABLE',
};

// Every request decided by the database, one statement each (`leases: false`): the per-request path's
// exactness and sweeping. The default, leases, has its own spec (shared-leases.e2e-spec.ts).
const PER_REQUEST = { leases: false } as const;

describePostgres('shared PostgreSQL store, per-request admission (leases off)', () => {
  jest.setTimeout(90_000);

  it('two app processes on one database: 20 then 280 parallel requests, 100 calls left → exactly 100 admitted', async () => {
    const schema = await createSchema();
    let servers: ServerProcess[] = [];
    try {
      // A generous enforcement timeout: this test is about exactness under contention, not latency.
      const env = {
        USAGE_TEST_SCHEMA: schema,
        USAGE_TEST_ENFORCEMENT_TIMEOUT_MS: '5000',
        USAGE_TEST_LEASES: 'false',
      };
      servers = await Promise.all([spawnServer(env), spawnServer(env)]);
      for (const s of servers) {
        const warm = await request(s.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer('plan=unlimited;warm-up'))
          .send(chat());
        expect(warm.status).toBe(200);
      }
      const user = 'plan=hundred;two-processes';
      const call = (i: number) =>
        request(servers[i % 2].url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer(user))
          .send(chat());
      // A first wave of 20 (10 through each instance) is all admitted, so both instances have written to
      // the shared counter before the contended wave. Inside one parallel burst, which instance wins the
      // row lock is up to the scheduler: one of them taking all 100 is a legal outcome, and made this
      // check flaky on a loaded 2-core machine.
      const first = await Promise.all(Array.from({ length: 20 }, (_, i) => call(i)));
      expect(first.map((r) => r.status)).toEqual(Array(20).fill(200));
      // Then 280 in parallel, alternating between the instances, for the 80 calls left.
      const results = await Promise.all(Array.from({ length: 280 }, (_, i) => call(i)));
      const codes = results.map((r) => r.status);
      const tally: Record<number, number> = {};
      for (const c of codes) tally[c] = (tally[c] ?? 0) + 1;
      expect(tally).toEqual({ 200: 80, 429: 200 });
      expect(
        await sql(
          schema,
          "SELECT used, reserved FROM usage_counters WHERE user_id = $1 AND metric = 'calls'",
          [user],
        ),
      ).toEqual([{ used: 100, reserved: 0 }]);
      expect(await sql(schema, 'SELECT COUNT(*) AS n FROM usage_events WHERE user_id = $1', [user])).toEqual([
        { n: 100 },
      ]);
      expect(await sql(schema, 'SELECT COUNT(*) AS n FROM usage_reservations')).toEqual([{ n: 0 }]);
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
      await dropSchema(schema);
    }
  });

  it('8 simultaneous first requests of a new user: one counter row per limit, all decided by the same limits', async () => {
    const t = await createTestApp({ store: 'postgres', shared: PER_REQUEST });
    try {
      const user = 'brand-new';
      const results = await Promise.all(
        Array.from({ length: 8 }, () =>
          request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat()),
        ),
      );
      expect(results.filter((r) => r.status === 200)).toHaveLength(5);
      const refused = results.filter((r) => r.status === 429);
      expect(refused).toHaveLength(3);
      for (const r of refused)
        expect(r.body.usage_info).toMatchObject({ scope: 'ai_text', limit: 5, current: 5 });
      expect(
        await sql(
          t.schema!,
          'SELECT scope, metric, used, reserved FROM usage_counters WHERE user_id = $1 ORDER BY scope',
          [user],
        ),
      ).toEqual([
        { scope: '*', metric: 'cost', used: expect.any(Number), reserved: 0 },
        { scope: 'ai_text', metric: 'calls', used: 5, reserved: 0 },
      ]);
    } finally {
      await t.close();
    }
  });

  it('a cost budget under 300 parallel requests settling below their estimates: used ≤ limit, nothing left reserved', async () => {
    const plans: Plan[] = [
      ...TEST_PLANS,
      { name: 'budget', limits: [{ metric: 'cost', scope: '*', period: 'month', max: 0.01 }] },
    ];
    const t = await createTestApp({
      store: 'postgres',
      shared: PER_REQUEST,
      usage: { plans, enforcementTimeoutMs: 2000 },
    });
    try {
      const user = 'plan=budget;spender';
      // Estimate: 2 + 1000 tokens of gpt-4o-mini = 601 µ$; actual: 10 in + 100 out = 62 µ$.
      const body = chat({ max_tokens: 1000, report: { prompt: 10, completion: 100 } });
      const results = await Promise.all(
        Array.from({ length: 300 }, () =>
          request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(body),
        ),
      );
      const admitted = results.filter((r) => r.status === 200).length;
      expect(results.every((r) => r.status === 200 || r.status === 429)).toBe(true);
      expect(admitted).toBeGreaterThanOrEqual(Math.floor(10_000 / 601));
      const [counter] = await sql<{ used: number; reserved: number }>(
        t.schema!,
        "SELECT used, reserved FROM usage_counters WHERE user_id = $1 AND metric = 'cost'",
        [user],
      );
      expect(counter).toEqual({ used: 62 * admitted, reserved: 0 });
      expect(counter.used).toBeLessThanOrEqual(10_000);
      expect(
        await sql(
          t.schema!,
          'SELECT COUNT(*) AS n, SUM(cost_micros) AS c FROM usage_events WHERE user_id = $1',
          [user],
        ),
      ).toEqual([{ n: admitted, c: 62 * admitted }]);
      expect(await sql(t.schema!, 'SELECT COUNT(*) AS n FROM usage_reservations')).toEqual([{ n: 0 }]);
    } finally {
      await t.close();
    }
  });

  it('database unreachable mid-run → 503 within the timeout, no 500, no hang; 200 again when it returns', async () => {
    const proxy = new TcpProxy(PG.port);
    const port = await proxy.start();
    const t = await createTestApp({
      store: 'postgres',
      shared: PER_REQUEST,
      pgPort: port,
      usage: { enforcementTimeoutMs: 250 },
    });
    const post = () =>
      request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('plan=unlimited;outage'))
        .send(chat());
    try {
      expect((await post()).status).toBe(200);
      await proxy.cut();
      const during: { status: number; ms: number }[] = [];
      for (let i = 0; i < 6; i++) {
        const started = Date.now();
        const res = await post();
        during.push({ status: res.status, ms: Date.now() - started });
        if (res.status === 503) expect(res.body).toEqual(EXPECTED_503);
      }
      expect(during.map((d) => d.status)).toEqual([503, 503, 503, 503, 503, 503]);
      expect(Math.max(...during.map((d) => d.ms))).toBeLessThan(1000);
      const health = await request(t.url).get('/health/usage');
      expect(health.status).toBe(503);
      expect(health.body.error).toEqual({
        usage_store: { status: 'down', reason: 'shared usage database unavailable' },
      });
      expect(JSON.stringify(health.body)).not.toMatch(/127\.0\.0\.1|postgres|5432/);
      await proxy.restore();
      let back = 0;
      for (let i = 0; i < 50 && back !== 200; i++) {
        back = (await post()).status;
        if (back !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      expect(back).toBe(200);
      expect((await request(t.url).get('/health/usage')).status).toBe(200);
      const failures = t.app.get(UsageService).enforcementStats().failures;
      expect(Object.keys(failures)).toEqual(['database_session_unavailable:openai']);
    } finally {
      await proxy.restore().catch(() => undefined);
      await t.close();
      await proxy.stop();
    }
  });

  it(`${EMERGENCY_FAIL_OPEN_ENV} lets requests through while the database is unreachable`, async () => {
    const proxy = new TcpProxy(PG.port);
    const port = await proxy.start();
    process.env[EMERGENCY_FAIL_OPEN_ENV] = 'on';
    const t = await createTestApp({ store: 'postgres', shared: PER_REQUEST, pgPort: port });
    delete process.env[EMERGENCY_FAIL_OPEN_ENV];
    try {
      await proxy.cut();
      const res = await request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('open-door'))
        .send(chat());
      expect(res.status).toBe(200);
      expect(t.app.get(UsageService).enforcementStats().failOpen).toEqual({ openai: 1 });
    } finally {
      await proxy.restore();
      await t.close();
      await proxy.stop();
    }
  });

  it('releases, once, the reservation of an instance killed mid-request', async () => {
    const schema = await createSchema();
    const server = await spawnServer({ USAGE_TEST_SCHEMA: schema, USAGE_TEST_LEASES: 'false' });
    const user = 'plan=hundred;crashed';
    try {
      void request(server.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer(user))
        .send(chat({ delayMs: 10_000 }))
        .catch(() => undefined);
      for (let i = 0; i < 50; i++) {
        const [r] = await sql<{ n: number }>(schema, 'SELECT COUNT(*) AS n FROM usage_reservations');
        if (r.n === 1) break;
        await new Promise((res) => setTimeout(res, 50));
      }
      await server.stop('SIGKILL');
      expect(await sql(schema, "SELECT reserved FROM usage_counters WHERE metric = 'calls'")).toEqual([
        { reserved: 1 },
      ]);
      const t = await createTestApp({ store: 'postgres', shared: PER_REQUEST, schema });
      try {
        const store = t.probe.store as SharedPostgresStore;
        expect(await store.sweep(Date.now())).toBe(0); // not expired yet
        expect(await store.sweep(Date.now() + 16 * 60_000)).toBe(1);
        expect(await store.sweep(Date.now() + 16 * 60_000)).toBe(0);
        expect(await sql(schema, "SELECT used, reserved FROM usage_counters WHERE metric = 'calls'")).toEqual(
          [{ used: 0, reserved: 0 }],
        );
      } finally {
        await t.close();
      }
    } finally {
      await server.stop('SIGKILL');
      await dropSchema(schema);
    }
  });
});
