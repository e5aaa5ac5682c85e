import { Agent } from 'node:http';
import { Test } from '@nestjs/testing';
import request from 'supertest';
import { Client } from 'pg';
import { UsageMonitoringModule } from '@app/usage-monitoring';
import { createTestApp, TEST_PLANS } from './utils/create-test-app';
import { postStatus } from './utils/post-status';
import { spawnServer } from './utils/spawn-server';
import { bearer } from './utils/test-controllers';
import { createSchema, describePostgres, dropSchema, PG, pgOptions, sql } from './utils/test-store';

const EXPECTED_503 = {
  error: 'Usage limit enforcement unavailable',
  message: 'Unable to validate usage limits right now. Please retry shortly.',
  code: 'USAGE_LIMIT_ENFORCEMENT_UNAVAILABLE',
};
const URL_PATH = '/openai/v1/chat/completions';

function tally(codes: number[]): Record<number, number> {
  const t: Record<number, number> = {};
  for (const c of codes) t[c] = (t[c] ?? 0) + 1;
  return t;
}

/**
 * A burst on the shared store waits in line behind the database's statements (each batch goes once the one
 * before it answered), within `storage.queueTimeoutMs`; a database that stops answering still gets the 503 at
 * `enforcementTimeoutMs`. Before the queue timeout, 1,000 new users at once on a cold instance got 675 to 993
 * 503s with leases and up to 98 without (scratch runs, 2026-12-07).
 */
describePostgres(
  'shared PostgreSQL store: a burst in line behind the database (storage.queueTimeoutMs)',
  () => {
    jest.setTimeout(120_000);

    it.each([
      // `big` users take leases (their first request's take goes in a batch with the others');
      // `hundred` users' counters have no room for leases, so every request is one reservation statement.
      ['leases (the default)', {}, 'big'],
      ['leases off', { USAGE_TEST_LEASES: 'false' }, 'hundred'],
    ])(
      '1,000 new users at once on a cold instance, %s: every request 200 on the default timeouts, each charged once',
      async (_, env, plan) => {
        const schema = await createSchema();
        const server = await spawnServer({ USAGE_TEST_SCHEMA: schema, ...env });
        const agent = new Agent({ keepAlive: true, maxSockets: 1000 });
        try {
          const users = Array.from({ length: 1000 }, (_, i) => `plan=${plan};burst-${i}`);
          const statuses = await Promise.all(
            users.map((u) => postStatus(`${server.url}${URL_PATH}`, agent, u)),
          );
          expect(tally(statuses)).toEqual({ 200: 1000 });
          await server.stop('SIGTERM'); // graceful: settlements committed, leases given back
          expect(
            await sql(
              schema,
              `SELECT COUNT(DISTINCT user_id) AS users, COUNT(*) AS rows FROM usage_events WHERE user_id LIKE $1`,
              [`plan=${plan};burst-%`],
            ),
          ).toEqual([{ users: 1000, rows: 1000 }]);
          expect(
            await sql(
              schema,
              `SELECT COUNT(*) AS counters, SUM(used) AS used, SUM(reserved) AS reserved FROM usage_counters
             WHERE metric = 'calls'`,
            ),
          ).toEqual([{ counters: 1000, used: 1000, reserved: 0 }]);
        } finally {
          agent.destroy();
          await server.stop('SIGKILL');
          await dropSchema(schema);
        }
      },
    );

    it.each([
      ['leases (the default)', undefined, 'big'],
      ['leases off', false, 'hundred'],
    ] as const)(
      'a database that stops answering (its counters locked), %s: each request still gets the exact 503 at the enforcement timeout, not the queue timeout',
      async (_, leases, plan) => {
        const t = await createTestApp({
          store: 'postgres',
          shared: { leases, timeouts: { lockMs: 20_000, statementMs: 20_000 } },
          usage: { enforcementTimeoutMs: 250 },
        });
        const post = (user: string) =>
          request(t.url)
            .post(URL_PATH)
            .set('authorization', bearer(user))
            .send({ messages: [{ role: 'user', content: 'hi' }] });
        const locker = new Client({ ...PG, options: `-c search_path=${t.schema}` });
        await locker.connect();
        try {
          expect((await post(`plan=${plan};warm`)).status).toBe(200);
          await locker.query('BEGIN');
          await locker.query('LOCK TABLE usage_counters IN ACCESS EXCLUSIVE MODE');
          // One at a time (the store idle before each), then 50 new users at once.
          for (let i = 0; i < 3; i++) {
            const started = Date.now();
            const res = await post(`plan=${plan};stalled-${i}`);
            const ms = Date.now() - started;
            expect(res.status).toBe(503);
            expect(res.body).toEqual(EXPECTED_503);
            expect(ms).toBeGreaterThanOrEqual(250);
            expect(ms).toBeLessThan(1_500);
          }
          const started = Date.now();
          const burst = await Promise.all(
            Array.from({ length: 50 }, (_, i) => post(`plan=${plan};stalled-burst-${i}`)),
          );
          expect(tally(burst.map((r) => r.status))).toEqual({ 503: 50 });
          expect(Date.now() - started).toBeLessThan(1_500);
          await locker.query('ROLLBACK');
          let back = 0;
          for (let i = 0; i < 50 && back !== 200; i++) {
            back = (await post(`plan=${plan};after`)).status;
            if (back !== 200) await new Promise((r) => setTimeout(r, 100));
          }
          expect(back).toBe(200);
        } finally {
          await locker.query('ROLLBACK').catch(() => undefined);
          await locker.end();
          await t.close();
        }
      },
    );

    it('a database that stops answering while a burst is in line: the requests in line get 503 while it is silent, not after the queue timeout', async () => {
      const schema = await createSchema();
      // Leases off: every request one reservation statement, 256 to a batch, one batch after another.
      // Lock and statement timeouts of 20 s: the locked statements never fail while the test looks.
      const server = await spawnServer({
        USAGE_TEST_SCHEMA: schema,
        USAGE_TEST_LEASES: 'false',
        USAGE_TEST_LOCK_MS: '20000',
      });
      const agent = new Agent({ keepAlive: true, maxSockets: 1500 });
      const locker = new Client({ ...PG, options: `-c search_path=${schema}` });
      const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));
      const counters = async () =>
        (await sql<{ n: number }>(schema, 'SELECT COUNT(*) AS n FROM usage_counters'))[0].n;
      try {
        await locker.connect();
        const done: { status: number; at: number }[] = [];
        const burst = Promise.all(
          Array.from({ length: 1500 }, (_, i) =>
            postStatus(`${server.url}${URL_PATH}`, agent, `plan=hundred;line-${i}`).then((status) =>
              done.push({ status, at: Date.now() }),
            ),
          ),
        );
        // A slow database first: the counters locked 80 ms of every 100, so a batch answers about every
        // 100 ms. The line moves, and every request in it has its first look at the enforcement timeout
        // (and is given the queue timeout) before two batches (512 users, 3 counters each) are through.
        while ((await counters()) < 2 * 256 * 3) {
          await locker.query('BEGIN');
          await locker.query('LOCK TABLE usage_counters IN ACCESS EXCLUSIVE MODE');
          await sleep(80);
          await locker.query('ROLLBACK');
          await sleep(20);
        }
        // Then silent. Admitted so far: a reservation row until settled, then a ledger row; the lock waits
        // for the batch in flight, so at most one more batch (256) is admitted before it.
        const [{ n: admitted }] = await sql<{ n: number }>(
          schema,
          'SELECT (SELECT COUNT(*) FROM usage_reservations) + (SELECT COUNT(*) FROM usage_events) AS n',
        );
        await locker.query('BEGIN');
        await locker.query('LOCK TABLE usage_counters IN ACCESS EXCLUSIVE MODE');
        const lockedAt = Date.now();
        await sleep(2_500);
        const unlockedAt = Date.now();
        await locker.query('ROLLBACK');
        await burst;
        // Those in line get 503 while nothing answers; admitted ones wait for their ledger rows' commit, made
        // once the lock goes. With one look at the enforcement timeout only, those in line, already given the
        // 5 s queue timeout, waited through the silence and were admitted once the lock went (every one of
        // 1,500 got 200 in a run of that version).
        const refused = done.filter((d) => d.status === 503);
        expect(admitted).toBeLessThan(1000);
        expect(done.filter((d) => d.status !== 200 && d.status !== 503)).toEqual([]);
        expect(refused.length).toBeGreaterThanOrEqual(1500 - admitted - 256);
        expect(refused.filter((d) => d.at < lockedAt || d.at >= unlockedAt)).toEqual([]);
      } finally {
        await locker.query('ROLLBACK').catch(() => undefined);
        await locker.end();
        agent.destroy();
        await server.stop('SIGKILL');
        await dropSchema(schema);
      }
    });

    it('refuses a bad queue timeout at start-up, naming the option', async () => {
      const build = (queueTimeoutMs: unknown) =>
        Test.createTestingModule({
          imports: [
            UsageMonitoringModule.forRoot({
              plans: TEST_PLANS,
              storage: {
                type: 'shared',
                dataSource: pgOptions('public'),
                queueTimeoutMs: queueTimeoutMs as never,
              },
            }),
          ],
        }).compile();
      await expect(build(0)).rejects.toThrow('storage.queueTimeoutMs must be an integer ≥ 1 (got 0)');
      await expect(build('5s')).rejects.toThrow('storage.queueTimeoutMs must be an integer ≥ 1 (got "5s")');
    });
  },
);
