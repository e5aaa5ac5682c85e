import { rmSync } from 'node:fs';
import request from 'supertest';
import { PerUserSqliteStore } from '@app/usage-monitoring/storage/sqlite/per-user-sqlite.store';
import { createTestApp, tempDataDir } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { describeSqlite } from './utils/test-store';
import { queryUserDb } from './utils/user-db';

const chat = { messages: [{ role: 'user', content: 'hello' }], max_tokens: 5 };

describeSqlite('storage.driver (sqlite3 and better-sqlite3 share the file format)', () => {
  it('a data directory written through one driver carries on through the other, limits and ledger intact', async () => {
    const dataDir = tempDataDir();
    const user = 'free-switcher'; // plan `free`: 5 AI text calls a month
    const statuses = async (driver: 'sqlite3' | 'better-sqlite3', n: number) => {
      // A generous enforcement timeout: the first request of each start opens the user's file, which on a
      // loaded CI machine took longer than the default 250 ms once (a 503 where a 429 was due). This test is
      // about the file format, not latency.
      const t = await createTestApp({ usage: { storage: { dataDir, driver }, enforcementTimeoutMs: 5000 } });
      try {
        expect((t.probe.store as PerUserSqliteStore).driver).toBe(driver);
        const out: number[] = [];
        for (let i = 0; i < n; i++) {
          const res = await request(t.url)
            .post('/openai/v1/chat/completions')
            .set('authorization', bearer(user))
            .send(chat);
          out.push(res.status);
        }
        return out;
      } finally {
        await t.close();
      }
    };
    try {
      // Alternating drivers on the same files (user file, journal and intent log).
      expect(await statuses('sqlite3', 2)).toEqual([200, 200]);
      expect(await statuses('better-sqlite3', 2)).toEqual([200, 200]);
      expect(await statuses('sqlite3', 2)).toEqual([200, 429]);
      expect(await statuses('better-sqlite3', 1)).toEqual([429]);
      const [{ n }] = await queryUserDb<{ n: number }>(
        dataDir,
        user,
        'SELECT COUNT(*) AS n FROM usage_events',
      );
      expect(n).toBe(5);
      const [{ used }] = await queryUserDb<{ used: number }>(
        dataDir,
        user,
        "SELECT used FROM usage_counters WHERE metric = 'calls' AND scope = 'ai_text'",
      );
      expect(used).toBe(5);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
