import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Database, OPEN_READONLY } from 'sqlite3';
import request from 'supertest';
import { JOURNAL_FILE, PerUserSqliteStore, UsageService } from '@app/usage-monitoring';
import { createTestApp, tempDataDir } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb, sqliteFiles } from './utils/user-db';
import { describeSqlite } from './utils/test-store';

const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };

/** Rows in the cross-user journal, grouped by nothing: how many the users' files have not confirmed. */
function journalRows(dataDir: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const db = new Database(join(dataDir, JOURNAL_FILE), OPEN_READONLY, (err) => {
      if (err) return reject(err);
      db.get('SELECT COUNT(*) AS n FROM usage_journal', (e, row: { n: number }) => {
        db.close();
        if (e) reject(e);
        else resolve(row.n);
      });
    });
  });
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
    const t = await createTestApp({
      usage: { storage: { dataDir, maxOpenDataSources: 3, journal: { applyDelayMs: 60_000 } } },
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
      const stillJournaled = await journalRows(t.dataDir);
      expect(stillJournaled).toBeGreaterThanOrEqual(1); // the users still open
      expect(stillJournaled).toBeLessThanOrEqual(3);
      // Reopened, the hot user reads its counters back from its file: still exhausted.
      expect((await post(hot)).status).toBe(429);
      const report = await t.app.get(UsageService).getUsage(hot);
      expect(report.limits.find((l) => l.metric === 'calls')).toMatchObject({ used: 100, reserved: 0 });

      await t.close();
      closed = true;
      // Closing applied the rest and emptied the journal: every file holds exactly its rows.
      expect(await journalRows(t.dataDir)).toBe(0);
      expect(await ledgerRows(t.dataDir, hot)).toBe(100);
      for (const u of others) expect(await ledgerRows(t.dataDir, u)).toBe(1);
      expect(sqliteFiles(t.dataDir).sort()).toHaveLength(1 + 1 + others.length); // journal + 7 users
    } finally {
      if (!closed) await t.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
