import { Agent } from 'node:http';
import { SharedPostgresStore } from '@app/usage-monitoring/storage/shared/shared-postgres.store';
import { createTestApp } from './utils/create-test-app';
import { postMarked } from './utils/post-status';
import { spawnServer } from './utils/spawn-server';
import { createSchema, describePostgres, dropSchema, sql } from './utils/test-store';

const USER = 'plan=big;pg-intent';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describePostgres('durable intent (shared PostgreSQL)', () => {
  jest.setTimeout(60_000);

  it('requests in flight when their instance dies are charged once at their estimate by the sweeper, flagged interrupted', async () => {
    const schema = await createSchema();
    const server = await spawnServer({ USAGE_TEST_SCHEMA: schema, USAGE_TEST_DURABLE_INTENT: '1' });
    try {
      const agent = new Agent({ keepAlive: true });
      for (let i = 0; i < 3; i++) expect(await postMarked(server.url, agent, USER, `done-${i}`)).toBe(200);
      // Four requests whose upstream call takes 5 s: admitted, running, when the instance dies.
      const stuck = Array.from({ length: 4 }, (_, i) =>
        postMarked(server.url, agent, USER, `stuck-${i}`, { delayMs: 5_000, max_tokens: 50 }),
      );
      await sleep(500);
      await server.stop('SIGKILL');
      expect(await Promise.all(stuck)).toEqual([0, 0, 0, 0]);
      agent.destroy();

      // Another instance's sweeper (durable intent or not), once the reservations have expired
      // (reservationTtlMs, 15 minutes).
      const t = await createTestApp({ store: 'postgres', schema });
      try {
        const store = t.probe.store as SharedPostgresStore;
        expect(await store.sweep(Date.now())).toBe(0);
        expect(await store.sweep(Date.now() + 16 * 60_000)).toBe(4);
        expect(await store.sweep(Date.now() + 16 * 60_000)).toBe(0);
      } finally {
        await t.close();
      }
      const rows = await sql<{
        endpoint: string;
        outcome: string;
        estimated: number;
        status_code: number;
        output_tokens: string;
      }>(
        schema,
        'SELECT endpoint, outcome, estimated, status_code, output_tokens FROM usage_events ORDER BY endpoint',
      );
      expect(
        rows.map((r) => [r.endpoint, r.outcome, r.estimated, r.status_code, Number(r.output_tokens)]),
      ).toEqual([
        ['/marked/done-0', 'ok', 0, 200, 5],
        ['/marked/done-1', 'ok', 0, 200, 5],
        ['/marked/done-2', 'ok', 0, 200, 5],
        ['/marked/stuck-0', 'interrupted', 1, 0, 50],
        ['/marked/stuck-1', 'interrupted', 1, 0, 50],
        ['/marked/stuck-2', 'interrupted', 1, 0, 50],
        ['/marked/stuck-3', 'interrupted', 1, 0, 50],
      ]);
      expect(
        await sql(
          schema,
          "SELECT used::int, reserved::int FROM usage_counters WHERE user_id = $1 AND metric = 'calls'",
          [USER],
        ),
      ).toEqual([{ used: 7, reserved: 0 }]);
      expect(await sql(schema, 'SELECT COUNT(*)::int AS n FROM usage_reservations')).toEqual([{ n: 0 }]);
    } finally {
      await server.stop('SIGKILL');
      await dropSchema(schema);
    }
  });
});
