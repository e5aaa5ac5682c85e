import { rmSync } from 'node:fs';
import { join } from 'node:path';
import request from 'supertest';
import { UsageService } from '@app/usage-monitoring';
import { JOURNAL_FILE } from '@app/usage-monitoring/storage/sqlite/usage-journal';
import { PerUserSqliteStore } from '@app/usage-monitoring/storage/sqlite/per-user-sqlite.store';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';
import { createTestApp, tempDataDir } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb, sqliteFiles } from './utils/user-db';
import { describeSqlite } from './utils/test-store';
import { openSqliteFile, querySqliteFile } from './utils/sqlite-file';
import type { SqliteConnection } from '@app/usage-monitoring/storage/sqlite/sqlite-connection';

const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };

/** Rows in the cross-user journal, grouped by nothing: how many the users' files have not confirmed. */
async function journalRows(dataDir: string): Promise<number> {
  const [{ n }] = await querySqliteFile<{ n: number }>(
    join(dataDir, JOURNAL_FILE),
    'SELECT COUNT(*) AS n FROM usage_journal',
  );
  return n;
}

const ledgerRows = async (dataDir: string, user: string) =>
  (await queryUserDb<{ n: number }>(dataDir, user, 'SELECT COUNT(*) AS n FROM usage_events'))[0].n;
const callsUsed = async (dataDir: string, user: string) =>
  (
    await queryUserDb<{ used: number }>(
      dataDir,
      user,
      "SELECT used FROM usage_counters WHERE metric = 'calls' AND scope = 'openai'",
    )
  )[0]?.used ?? 0;

describeSqlite('cross-user journal (storage.journal)', () => {
  it('acknowledges from the journal, stays exact under 300 parallel requests, applies on eviction and on close', async () => {
    // A 60 s apply delay: rows reach a user's file only when the user's database is closed.
    const dataDir = tempDataDir(); // ours: it outlives the app, to be read after closing
    // Evicting the hot user applies its 100 rows while the next user waits for a slot: on a loaded machine that
    // outlasted the default 250 ms enforcement timeout once (a 503; 2026-12-06). This test is about exactness.
    const t = await createTestApp({
      usage: {
        enforcementTimeoutMs: 5_000,
        storage: { dataDir, maxOpenDataSources: 3, journal: { applyDelayMs: 60_000 } },
      },
    });
    const post = (user: string) =>
      request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat);
    const hot = 'plan=hundred;journal-hot';
    const others = Array.from({ length: 6 }, (_, i) => `plan=unlimited;journal-${i}`);
    let closed = false;
    try {
      expect(t.probe.store).toBeInstanceOf(PerUserSqliteStore);
      const codes = (await Promise.all(Array.from({ length: 300 }, () => post(hot)))).map((r) => r.status);
      expect(codes.filter((c) => c === 200)).toHaveLength(100);
      expect(codes.filter((c) => c === 429)).toHaveLength(200);
      // Every acknowledged row is in the journal; none has reached the user's file yet.
      expect(await journalRows(t.dataDir)).toBe(100);
      expect(await ledgerRows(t.dataDir, hot)).toBe(0);
      expect((await post(hot)).status).toBe(429); // the in-memory counters are the authority meanwhile

      // Six more users through a cap of 3: the hot user's database is evicted, which applies its rows.
      for (const u of others) expect((await post(u)).status).toBe(200);
      expect(await ledgerRows(t.dataDir, hot)).toBe(100);
      expect(await callsUsed(t.dataDir, hot)).toBe(100);
      // They leave the journal once the spending summary has their sums too (about once a second).
      let stillJournaled = await journalRows(t.dataDir);
      for (const end = Date.now() + 3_000; stillJournaled > 3 && Date.now() < end;) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        stillJournaled = await journalRows(t.dataDir);
      }
      expect(stillJournaled).toBeGreaterThanOrEqual(1); // the users still open
      expect(stillJournaled).toBeLessThanOrEqual(3);
      // Parked in memory with its counters (its database closed): still exhausted.
      expect((await post(hot)).status).toBe(429);
      const report = await t.app.get(UsageService).getUsage(hot);
      expect(report.limits.find((l) => l.metric === 'calls')).toMatchObject({ used: 100, reserved: 0 });

      await t.close();
      closed = true;
      // Closing applied the rest and emptied the journal: every file holds exactly its rows.
      expect(await journalRows(t.dataDir)).toBe(0);
      expect(await ledgerRows(t.dataDir, hot)).toBe(100);
      for (const u of others) expect(await ledgerRows(t.dataDir, u)).toBe(1);
      expect(sqliteFiles(t.dataDir)).toHaveLength(1 + others.length); // 7 users, the journal aside
    } finally {
      if (!closed) await t.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('keeps closed users in memory: exact limits, rows applied in the background within the open-file cap, users dropped from memory read back from their files', async () => {
    const dataDir = tempDataDir();
    const t = await createTestApp({
      usage: {
        storage: { dataDir, maxOpenDataSources: 2, journal: { applyDelayMs: 100, maxUsersInMemory: 4 } },
        // 960 requests at once through 2 open files: with the default 250 ms a few were answered 503 on a
        // loaded machine (100 × 200 and 16 × 429 for one user, then a retry). This test is about exactness.
        enforcementTimeoutMs: 5000,
      },
    });
    const store = t.probe.store as PerUserSqliteStore;
    const post = (user: string) =>
      request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat);
    const users = Array.from({ length: 8 }, (_, i) => `plan=hundred;parked-${i}`);
    let maxOpen = 0;
    const sampler = setInterval(() => (maxOpen = Math.max(maxOpen, store.openDataSources)), 1);
    let closed = false;
    try {
      // 8 users × 120 parallel requests with 100 calls each, through 2 open files.
      const codes = await Promise.all(
        users.map(async (u) =>
          (await Promise.all(Array.from({ length: 120 }, () => post(u)))).map((r) => r.status),
        ),
      );
      for (const c of codes) {
        expect(c.filter((x) => x === 200)).toHaveLength(100);
        expect(c.filter((x) => x === 429)).toHaveLength(20);
      }
      // The background applier empties the journal while the app runs.
      for (let i = 0; i < 100 && (await journalRows(t.dataDir)) > 0; i++)
        await new Promise((r) => setTimeout(r, 50));
      clearInterval(sampler);
      expect(await journalRows(t.dataDir)).toBe(0);
      expect(maxOpen).toBeLessThanOrEqual(2);
      expect(maxOpen).toBeGreaterThanOrEqual(1);
      expect(store.usersInMemory).toBeGreaterThanOrEqual(1);
      expect(store.usersInMemory).toBeLessThanOrEqual(4);
      for (const u of users) {
        expect(await ledgerRows(t.dataDir, u)).toBe(100);
        expect(await callsUsed(t.dataDir, u)).toBe(100);
      }
      // Open, parked or dropped (and read back from its file): every user is still exhausted.
      for (const u of users) expect((await post(u)).status).toBe(429);
      const service = t.app.get(UsageService);
      for (const u of users) {
        const report = await service.getUsage(u);
        expect(report.limits.find((l) => l.metric === 'calls')).toMatchObject({ used: 100, reserved: 0 });
      }
      await t.close();
      closed = true;
      expect(await journalRows(t.dataDir)).toBe(0);
      for (const u of users) expect(await ledgerRows(t.dataDir, u)).toBe(100);
    } finally {
      clearInterval(sampler);
      if (!closed) await t.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 30_000);

  it("a parked user's file that cannot be written: its rows stay in the journal, that user gets 503 and health is down; after release each row lands once", async () => {
    const dataDir = tempDataDir();
    const t = await createTestApp({
      usage: {
        storage: { dataDir, maxOpenDataSources: 1, busyTimeoutMs: 50, journal: { applyDelayMs: 50 } },
      },
    });
    const store = t.probe.store as PerUserSqliteStore;
    const post = (user: string) =>
      request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat);
    const [a, b] = ['plan=hundred;parked-a', 'plan=hundred;parked-b'];
    let locker: SqliteConnection | undefined;
    let closed = false;
    try {
      for (let i = 0; i < 3; i++) expect((await post(a)).status).toBe(200);
      expect((await post(b)).status).toBe(200); // a's database closes (cap 1): a is parked
      expect(store.usersInMemory).toBe(1);
      expect(await ledgerRows(t.dataDir, a)).toBe(3);
      // Another connection holds a's write lock: applying its next rows fails.
      locker = await openSqliteFile(join(t.dataDir, userFileName(a)));
      await locker.exec('BEGIN IMMEDIATE');
      expect((await post(a)).status).toBe(200); // durable in the journal: acknowledged
      expect((await post(a)).status).toBe(200);
      let refused = 200;
      for (let i = 0; i < 100 && refused !== 503; i++) {
        await new Promise((r) => setTimeout(r, 50));
        refused = (await fetch(`${t.url}/health/usage`)).status;
      }
      expect(refused).toBe(503);
      expect((await post(a)).status).toBe(503);
      expect((await post(b)).status).toBe(200); // other users are not held up
      expect(await journalRows(t.dataDir)).toBeGreaterThanOrEqual(2);
      await locker.exec('ROLLBACK');
      let health = 503;
      for (let i = 0; i < 100 && health !== 200; i++) {
        await new Promise((r) => setTimeout(r, 50));
        health = (await fetch(`${t.url}/health/usage`)).status;
      }
      expect(health).toBe(200);
      expect(await ledgerRows(t.dataDir, a)).toBe(5);
      expect((await post(a)).status).toBe(200);
      await t.close();
      closed = true;
      expect(await ledgerRows(t.dataDir, a)).toBe(6);
      expect(await callsUsed(t.dataDir, a)).toBe(6);
      expect(await ledgerRows(t.dataDir, b)).toBe(2);
      expect(await journalRows(t.dataDir)).toBe(0);
    } finally {
      await locker?.close();
      if (!closed) await t.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
