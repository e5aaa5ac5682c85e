import { join } from 'node:path';
import request from 'supertest';
import { UsageMeter } from '@app/usage-monitoring';
import { JOURNAL_FILE } from '@app/usage-monitoring/storage/sqlite/usage-journal';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { openSqliteFile } from './utils/sqlite-file';
import { bearer } from './utils/test-controllers';
import { describePostgres, describeSqlite, SQLITE_DRIVER, withClient } from './utils/test-store';
import { queryUserDb } from './utils/user-db';

/**
 * When a metered response is released. Without durable intent, only once its ledger row has committed; with
 * it, at once: the request's charge at its estimate committed before its handler ran, so a crash before the
 * row commits still charges it. These tests hold the write that commits the row (a lock on the journal, or
 * on PostgreSQL's ledger table) and watch whether the response waits for it.
 */
const HELD_MS = 1_000;
const chat = {
  messages: [{ role: 'user', content: 'hello there' }],
  max_tokens: 20,
  report: { prompt: 7, completion: 3 },
};

/** Resolves with how long `p` took, or with `Infinity` if it was still pending after `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<number> {
  const start = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<number>((resolve) => (timer = setTimeout(() => resolve(Infinity), ms)));
  const took = await Promise.race([p.then(() => Date.now() - start), late]);
  clearTimeout(timer);
  return took;
}

const post = (t: TestApp, user: string) =>
  request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat);

const ledgerRow = async (t: TestApp, user: string) =>
  queryUserDb(t, user, 'SELECT outcome, input_tokens, output_tokens, estimated FROM usage_events');

// `better-sqlite3` waits for a lock on the event loop, so its busy timeout is capped at 20 ms: a held
// journal fails the commit at once, which releases the response either way. `sqlite3` waits on its thread.
(SQLITE_DRIVER === 'sqlite3' ? describeSqlite : describe.skip)('response release (per-user SQLite)', () => {
  jest.setTimeout(30_000);

  /** Holds the journal's write lock for `HELD_MS` while `during` runs; resolves once it is given back. */
  async function holdingJournal(t: TestApp, during: () => Promise<void>): Promise<void> {
    const journal = await openSqliteFile(join(t.dataDir, JOURNAL_FILE));
    await journal.run('BEGIN IMMEDIATE', []);
    try {
      await during();
    } finally {
      await journal.run('ROLLBACK', []);
      await journal.close();
    }
  }

  it('with durable intent (the default), answers while the row’s commit waits; the row is exact once it commits', async () => {
    const t = await createTestApp();
    try {
      expect((await post(t, 'warm')).status).toBe(200); // the journal exists, the app is warm
      let answered = Infinity;
      await holdingJournal(t, async () => {
        const res = post(t, 'released');
        answered = await within(res, HELD_MS);
        expect((await res).status).toBe(200);
      });
      expect(answered).toBeLessThan(HELD_MS);
      expect(await ledgerRow(t, 'released')).toEqual([
        { outcome: 'ok', input_tokens: 7, output_tokens: 3, estimated: 0 },
      ]);
    } finally {
      await t.close();
    }
  });

  it('without durable intent, holds the response until its row has committed', async () => {
    const t = await createTestApp({ usage: { storage: { durableIntent: false } } });
    try {
      expect((await post(t, 'warm')).status).toBe(200);
      let res: Promise<request.Response> | undefined;
      await holdingJournal(t, async () => {
        res = post(t, 'held');
        expect(await within(res, HELD_MS)).toBe(Infinity);
      });
      expect((await res!).status).toBe(200);
      expect(await ledgerRow(t, 'held')).toEqual([
        { outcome: 'ok', input_tokens: 7, output_tokens: 3, estimated: 0 },
      ]);
    } finally {
      await t.close();
    }
  });
});

describePostgres('response release (shared PostgreSQL)', () => {
  jest.setTimeout(30_000);

  /** The settle statement waits for the held lock (1 s by default, then it fails and is retried later). */
  const WAIT = { lockMs: 5_000, statementMs: 5_000 };

  /** Holds off every insert into the ledger table while `during` runs. */
  async function holdingLedger(t: TestApp, during: () => Promise<void>): Promise<void> {
    await withClient(async (c) => {
      await c.query('BEGIN');
      await c.query('LOCK TABLE usage_events IN SHARE ROW EXCLUSIVE MODE');
      try {
        await during();
      } finally {
        await c.query('ROLLBACK');
      }
    }, t.schema);
  }

  const call = (t: TestApp, user: string) =>
    t.app.get(UsageMeter).run({ userId: user, provider: 'openai', request: chat }, () => ({
      model: 'gpt-4o-mini',
      usage: { prompt_tokens: 7, completion_tokens: 3 },
    }));

  it('durable intent without leases: the interceptor and UsageMeter.run answer while the row’s commit waits', async () => {
    const t = await createTestApp({ store: 'postgres', shared: { durableIntent: true, timeouts: WAIT } });
    try {
      expect((await post(t, 'plan=big;pg-warm')).status).toBe(200);
      await holdingLedger(t, async () => {
        const res = post(t, 'plan=big;pg-released');
        expect(await within(res, HELD_MS)).toBeLessThan(HELD_MS);
        expect((await res).status).toBe(200);
        expect(await within(call(t, 'plan=big;pg-run'), HELD_MS)).toBeLessThan(HELD_MS);
      });
      for (const user of ['plan=big;pg-released', 'plan=big;pg-run']) {
        let rows = await ledgerRow(t, user);
        for (const until = Date.now() + 5_000; rows.length === 0 && Date.now() < until;)
          rows = await ledgerRow(t, user);
        expect(rows).toEqual([{ outcome: 'ok', input_tokens: 7, output_tokens: 3, estimated: 0 }]);
      }
    } finally {
      await t.close();
    }
  });

  it('durable intent with leases: a call admitted from a lease has no intent, so both wait for its row', async () => {
    const t = await createTestApp({
      store: 'postgres',
      shared: { durableIntent: true, leases: { requests: 8, holdMs: 5_000 }, timeouts: WAIT },
    });
    try {
      // The first calls take the user's lease; the next are admitted from it, in memory.
      expect((await post(t, 'plan=big;pg-lease')).status).toBe(200);
      await call(t, 'plan=big;pg-lease');
      let res: Promise<request.Response> | undefined;
      let run: Promise<unknown> | undefined;
      await holdingLedger(t, async () => {
        res = post(t, 'plan=big;pg-lease');
        run = call(t, 'plan=big;pg-lease');
        expect(await Promise.all([within(res, HELD_MS), within(run, HELD_MS)])).toEqual([Infinity, Infinity]);
      });
      expect((await res!).status).toBe(200);
      await run;
      expect(
        await queryUserDb(
          t,
          'plan=big;pg-lease',
          "SELECT COUNT(*) AS n FROM usage_events WHERE outcome = 'ok'",
        ),
      ).toEqual([{ n: 4 }]);
    } finally {
      await t.close();
    }
  });
});
