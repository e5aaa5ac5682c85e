import { Agent } from 'node:http';
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { UsageService } from '@app/usage-monitoring';
import { JOURNAL_FILE } from '@app/usage-monitoring/storage/sqlite/usage-journal';
import { isIntentLogFile } from '@app/usage-monitoring/storage/sqlite/intent-log';
import { PerUserSqliteStore } from '@app/usage-monitoring/storage/sqlite/per-user-sqlite.store';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';
import { createTestApp, tempDataDir } from './utils/create-test-app';
import { postMarked } from './utils/post-status';
import { spawnServer, type ServerProcess } from './utils/spawn-server';
import { describeSqlite, SQLITE_DRIVER } from './utils/test-store';
import type { SqliteConnection } from '@app/usage-monitoring/storage/sqlite/sqlite-connection';
import { queryUserDb } from './utils/user-db';
import { openSqliteFile, querySqliteFile } from './utils/sqlite-file';

const USERS = ['plan=big;dur-a', 'plan=big;dur-b', 'plan=big;dur-c'];

/** Sends requests from `concurrency` loops until `stopAt`; returns every id with its status. */
async function loadUntil(
  url: string,
  stopAt: number,
  concurrency: number,
  prefix: string,
  body: object = {},
) {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const results: { id: string; user: string; status: number }[] = [];
  let n = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < stopAt && n < 20_000) {
        const id = `${prefix}-${n++}`;
        const user = USERS[n % USERS.length];
        const status = await postMarked(url, agent, user, id, body);
        results.push({ id, user, status });
        if (status === 0) break;
      }
    }),
  );
  agent.destroy();
  return results;
}

/** Rows left in the cross-user journal of a data directory. */
async function journalRows(dataDir: string): Promise<number> {
  const [{ n }] = await querySqliteFile<{ n: number }>(
    join(dataDir, JOURNAL_FILE),
    'SELECT COUNT(*) AS n FROM usage_journal',
  );
  return n;
}

async function ledger(dataDir: string, user: string) {
  const rows = await queryUserDb<{ endpoint: string }>(dataDir, user, 'SELECT endpoint FROM usage_events');
  const [counter] = await queryUserDb<{ used: number }>(
    dataDir,
    user,
    "SELECT used FROM usage_counters WHERE metric = 'calls'",
  );
  return { ids: rows.map((r) => r.endpoint.replace('/marked/', '')), used: counter?.used ?? 0 };
}

describeSqlite('durability (per-user SQLite, separate processes)', () => {
  jest.setTimeout(120_000);

  /**
   * `sqlite3` runs every mode. The better-sqlite3 project (the same SQLite, another binding) runs the modes
   * that differ in what the driver does at a kill: the default configuration (durable intent, 1 s apply
   * delay) and the open–commit–close cycles of users kept in memory; the apply delay's extremes exercise
   * the journal's scheduling, which is the same code for both drivers (CI time: ~55 s saved).
   */
  type Mode = { name: string; env: Record<string, string>; everyDriver?: boolean };
  const modes: Mode[] = [
    // The journal's rows applied to each user's file at once (the default waits 1 s).
    { name: 'applied to each user file at once', env: { USAGE_TEST_JOURNAL_MS: '0' } },
    // A 60 s apply delay: at each kill the acknowledged rows are in the journal only.
    { name: 'through the cross-user journal', env: { USAGE_TEST_JOURNAL_MS: '60000' } },
    // One open database for three users: the others are kept in memory and their rows reach their files
    // through the background applier (every 20 ms), so kills land during those open–commit–close cycles.
    {
      name: 'through the journal, users kept in memory (1 open file, 20 ms apply)',
      env: { USAGE_TEST_JOURNAL_MS: '20', USAGE_TEST_MAX_OPEN: '1' },
      everyDriver: true,
    },
    // Each admitted request's intent committed before its handler: those in flight at a kill are charged.
    { name: 'with durable intent', env: { USAGE_TEST_DURABLE_INTENT: '1' }, everyDriver: true },
  ];
  it.each(modes.filter((m) => SQLITE_DRIVER === 'sqlite3' || m.everyDriver))(
    'SIGKILL under load, 5 runs ($name): every acknowledged request has exactly one ledger row; counters equal the ledger',
    async ({ env }) => {
      const dataDir = tempDataDir();
      let server: ServerProcess | undefined;
      const acknowledged = new Map<string, string>();
      let sent = 0;
      try {
        for (let run = 0; run < 5; run++) {
          server = await spawnServer({ USAGE_TEST_DATA_DIR: dataDir, ...env });
          const killAt = Date.now() + 300 + Math.floor(Math.random() * 400);
          const killer = new Promise<void>((resolve) =>
            setTimeout(() => {
              server!.child.kill('SIGKILL');
              resolve();
            }, killAt - Date.now()),
          );
          const results = await loadUntil(server.url, killAt + 2_000, 24, `run${run}`);
          await killer;
          await server.exited;
          sent += results.length;
          for (const r of results) if (r.status === 200) acknowledged.set(r.id, r.user);
        }
        // Restart once more: recovery reads everything back; a lock left by the killed process is taken over.
        server = await spawnServer({ USAGE_TEST_DATA_DIR: dataDir, ...env });
        expect(await postMarked(server.url, new Agent(), USERS[0], 'after-recovery')).toBe(200);
        await server.stop();
        if (env.USAGE_TEST_JOURNAL_MS) expect(await journalRows(dataDir)).toBe(0); // everything applied
        // Nothing left to charge after a clean stop: the intent log's files are gone.
        if (env.USAGE_TEST_DURABLE_INTENT) expect(readdirSync(dataDir).filter(isIntentLogFile)).toEqual([]);
        acknowledged.set('after-recovery', USERS[0]);

        let rows = 0;
        for (const user of USERS) {
          const { ids, used } = await ledger(dataDir, user);
          rows += ids.length;
          expect(new Set(ids).size).toBe(ids.length); // no request recorded twice
          expect(used).toBe(ids.length); // counters equal the ledger
          const mine = [...acknowledged].filter(([, u]) => u === user).map(([id]) => id);
          const recorded = new Set(ids);
          expect(mine.filter((id) => !recorded.has(id))).toEqual([]); // no acknowledged request lost
        }
        if (process.env.USAGE_TEST_VERBOSE) {
          process.stderr.write(
            `SIGKILL ×5: ${sent} sent, ${acknowledged.size} acknowledged, ${rows} ledger rows, 0 lost\n`,
          );
        }
        expect(acknowledged.size).toBeGreaterThan(100);
        expect(rows).toBeGreaterThanOrEqual(acknowledged.size);
        expect(rows).toBeLessThanOrEqual(sent + 1);
      } finally {
        server?.child.kill('SIGKILL');
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
  );

  // Both apply delays through sqlite3; the 60 s one (every in-flight row only in the logs) through both.
  it.each<{ name: string; env: Record<string, string> }>(
    [
      { name: 'applied to each user file at once', env: { USAGE_TEST_JOURNAL_MS: '0' } },
      { name: 'through the cross-user journal', env: { USAGE_TEST_JOURNAL_MS: '60000' } },
    ].filter((m) => SQLITE_DRIVER === 'sqlite3' || m.env.USAGE_TEST_JOURNAL_MS === '60000'),
  )(
    'durable intent ($name): requests in flight at a SIGKILL are charged once at their estimate, flagged interrupted',
    async ({ env }) => {
      const dataDir = tempDataDir();
      const intent = { USAGE_TEST_DATA_DIR: dataDir, USAGE_TEST_DURABLE_INTENT: '1', ...env };
      let server = await spawnServer(intent);
      try {
        const agent = new Agent({ keepAlive: true });
        const done = await Promise.all(
          Array.from({ length: 6 }, (_, i) => postMarked(server.url, agent, USERS[i % 3], `done-${i}`)),
        );
        expect(done).toEqual(new Array(6).fill(200));
        // Twelve requests whose upstream call takes 5 s: admitted, their handlers running, when the process dies.
        const stuck = Array.from({ length: 12 }, (_, i) =>
          postMarked(server.url, agent, USERS[i % 3], `stuck-${i}`, { delayMs: 5_000, max_tokens: 50 }),
        );
        await new Promise((r) => setTimeout(r, 500));
        server.child.kill('SIGKILL');
        expect(await Promise.all(stuck)).toEqual(new Array(12).fill(0));
        await server.exited;
        agent.destroy();

        // The next start charges each of them, once; a second restart charges nothing more.
        for (let restart = 0; restart < 2; restart++) {
          server = await spawnServer(intent);
          await server.stop();
        }
        expect(readdirSync(dataDir).filter(isIntentLogFile)).toEqual([]);
        let interrupted = 0;
        for (const user of USERS) {
          const rows = await queryUserDb<{
            endpoint: string;
            outcome: string;
            estimated: number;
            status_code: number;
            input_tokens: number;
            output_tokens: number;
          }>(
            dataDir,
            user,
            'SELECT endpoint, outcome, estimated, status_code, input_tokens, output_tokens FROM usage_events',
          );
          const { used } = await ledger(dataDir, user);
          expect(used).toBe(rows.length); // counters equal the ledger
          expect(rows).toHaveLength(6); // 2 done and 4 stuck per user, each once
          for (const r of rows.filter((x) => x.endpoint.includes('stuck'))) {
            // The estimate: the prompt's tokens and the 50 max_tokens the request asked for.
            expect(r).toMatchObject({
              outcome: 'interrupted',
              estimated: 1,
              status_code: 0,
              output_tokens: 50,
            });
            expect(r.input_tokens).toBeGreaterThan(0);
            interrupted++;
          }
        }
        expect(interrupted).toBe(12);
      } finally {
        server.child.kill('SIGKILL');
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
  );

  it('SIGTERM: in-flight requests finish, pending writes commit, the process exits within 10 s', async () => {
    const dataDir = tempDataDir();
    const server = await spawnServer({ USAGE_TEST_DATA_DIR: dataDir });
    try {
      const agent = new Agent({ keepAlive: true });
      const slow = Array.from({ length: 10 }, (_, i) =>
        postMarked(server.url, agent, USERS[i % 3], `slow-${i}`, { delayMs: 600 }),
      );
      await new Promise((r) => setTimeout(r, 150));
      const started = Date.now();
      server.child.kill('SIGTERM');
      const statuses = await Promise.all(slow);
      const exit = await server.exited;
      expect(Date.now() - started).toBeLessThan(10_000);
      // Nest's shutdown hook closes the app, then re-raises the signal: exit by SIGTERM, after the close.
      expect([0, 'SIGTERM']).toContain(exit);
      expect(statuses).toEqual(new Array(10).fill(200));
      let total = 0;
      for (const user of USERS) {
        const { ids, used } = await ledger(dataDir, user);
        expect(used).toBe(ids.length);
        total += ids.length;
      }
      expect(total).toBe(10);
    } finally {
      server.child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describeSqlite('commit failures (per-user SQLite)', () => {
  const user = USERS[0];
  const targets = [
    {
      name: "the user's file (applying the journal's rows)",
      journal: { applyDelayMs: 0 },
      file: userFileName(user),
      write: "INSERT INTO usage_alerts VALUES ('x', 'x', 'x', 1, 0, 0, 0)",
    },
    {
      name: 'the cross-user journal',
      journal: { applyDelayMs: 0 },
      file: JOURNAL_FILE,
      write: "INSERT INTO usage_journal (entry) VALUES ('[]')",
    },
  ];
  it.each(targets)(
    'commits to $name fail: delivers produced responses, keeps their usage queued, answers 503 meanwhile, and commits each exactly once after recovery',
    async ({ journal, file, write }) => {
      const t = await createTestApp({ usage: { storage: { busyTimeoutMs: 100, journal } } });
      const store = t.probe.store as PerUserSqliteStore;
      const agent = new Agent({ keepAlive: true });
      let locker: SqliteConnection | undefined;
      const exec = (sql: string) => locker!.exec(sql);
      try {
        expect(await postMarked(t.url, agent, user, 'before')).toBe(200);
        // Another process-like connection takes the write lock: our commits now fail with SQLITE_BUSY.
        expect(await store.flush()).toBe(true); // 'before' is in the user's file: no commit in progress
        locker = await openSqliteFile(join(t.dataDir, file));
        await exec(`PRAGMA busy_timeout = 2000; BEGIN IMMEDIATE; ${write}`);
        const during = await Promise.all(
          Array.from({ length: 5 }, (_, i) => postMarked(t.url, agent, user, `during-${i}`)),
        );
        const admitted = during.flatMap((status, i) => (status === 200 ? [`during-${i}`] : []));
        if (SQLITE_DRIVER === 'sqlite3') {
          // The first commit waits out the busy timeout on SQLite's thread while all five are admitted;
          // their responses were produced before the failure was known: delivered.
          expect(during).toEqual([200, 200, 200, 200, 200]);
        } else {
          // better-sqlite3's capped busy wait fails a commit at once: a request whose response was produced
          // before is still delivered; those admitted after the failure is known get 503 (on the journal
          // that is the first; on the user's file, an earlier row's apply may already have failed).
          if (file === JOURNAL_FILE) expect(during[0]).toBe(200);
          expect(during.every((s) => s === 200 || s === 503)).toBe(true);
        }
        expect(store.pendingWrites()).toBeGreaterThanOrEqual(admitted.length);
        // A failed apply to the user's file is known once its busy wait has ended (after the responses).
        for (let i = 0; i < 100 && (await fetch(`${t.url}/health/usage`)).status !== 503; i++)
          await new Promise((r) => setTimeout(r, 20));
        const refused = await postMarked(t.url, agent, user, 'refused');
        expect(refused).toBe(503);
        expect(t.app.get(UsageService).enforcementStats().failures).toEqual({
          'operational_error:openai': 1 + during.filter((s) => s === 503).length,
        });
        const health = await fetch(`${t.url}/health/usage`);
        expect(health.status).toBe(503);
        await exec('ROLLBACK');
        const committed = async () => {
          for (let i = 0; i < 100 && store.pendingWrites() > 0; i++)
            await new Promise((r) => setTimeout(r, 50));
          expect(store.pendingWrites()).toBe(0);
        };
        await committed();
        expect(await postMarked(t.url, agent, user, 'after')).toBe(200);
        await committed(); // with the journal, the user's file receives 'after' a turn later
        const { ids, used } = await ledger(t.dataDir, user);
        expect(ids.sort()).toEqual(['after', 'before', ...admitted].sort());
        expect(used).toBe(2 + admitted.length);
      } finally {
        agent.destroy();
        await locker?.close();
        await t.close();
      }
    },
  );
});
