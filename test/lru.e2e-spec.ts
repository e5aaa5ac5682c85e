import request from 'supertest';
import { UsageService } from '@app/usage-monitoring';
import { PerUserSqliteStore } from '@app/usage-monitoring/storage/sqlite/per-user-sqlite.store';
import { createTestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb, sqliteFiles } from './utils/user-db';
import { describeSqlite } from './utils/test-store';

const chat = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };

describeSqlite('open DataSources (LRU)', () => {
  it('never holds more than the cap open, and never closes a user with a request in flight', async () => {
    const t = await createTestApp({ usage: { storage: { maxOpenDataSources: 4 } } });
    const store = t.probe.store as PerUserSqliteStore;
    expect(store).toBeInstanceOf(PerUserSqliteStore);
    let maxOpen = 0;
    const sampler = setInterval(() => (maxOpen = Math.max(maxOpen, store.openDataSources)), 1);
    try {
      const inFlight = request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('long-request'))
        .send({ ...chat, delayMs: 800 })
        .then((r) => r.status);
      await new Promise((r) => setTimeout(r, 50));
      // 20 users, 3 at a time, while the long request holds one of the 4 slots.
      const users = Array.from({ length: 20 }, (_, i) => `plan=unlimited;user-${i}`);
      for (let i = 0; i < users.length; i += 3) {
        const batch = users.slice(i, i + 3);
        const codes = await Promise.all(
          batch.map((u) =>
            request(t.url)
              .post('/openai/v1/chat/completions')
              .set('authorization', bearer(u))
              .send(chat)
              .then((r) => r.status),
          ),
        );
        expect(codes).toEqual(batch.map(() => 200));
        maxOpen = Math.max(maxOpen, store.openDataSources);
      }
      expect(await inFlight).toBe(200);
      expect(maxOpen).toBeLessThanOrEqual(4);
      expect(maxOpen).toBeGreaterThanOrEqual(2);
      expect(sqliteFiles(t.dataDir)).toHaveLength(21);
      const rows = await queryUserDb<{ n: number }>(
        t,
        'long-request',
        'SELECT COUNT(*) AS n FROM usage_events',
      );
      expect(rows[0].n).toBe(1);
      expect(t.app.get(UsageService).enforcementStats().trackingFailures).toBe(0);
      // Reopened users read their counters back.
      const report = await t.app.get(UsageService).getUsage('plan=unlimited;user-0');
      expect(report.plan).toBe('unlimited');
      const again = await t.app.get(UsageService).getUsage('long-request');
      expect(again.limits[0]).toMatchObject({ scope: 'ai_text', used: 1, reserved: 0 });
    } finally {
      clearInterval(sampler);
      await t.close();
    }
  });

  it('admits 300 new users arriving at once: their opens queue past the enforcement timeout, within the open timeout', async () => {
    // The defaults: 250 ms enforcement timeout, 5 s open timeout, 64 open databases. Each new user's file is
    // created and opened in turn (a few milliseconds each), so the last wait far longer than 250 ms.
    const t = await createTestApp();
    try {
      const users = Array.from({ length: 300 }, (_, i) => `burst-${i}`);
      const codes = await Promise.all(
        users.map((u) =>
          request(t.url)
            .post('/openai/v1/chat/completions')
            .set('authorization', bearer(u))
            .send(chat)
            .then((r) => r.status),
        ),
      );
      expect(codes.filter((c) => c !== 200)).toEqual([]);
      const usage = t.app.get(UsageService);
      expect(usage.enforcementStats().failures).toEqual({});
      expect(sqliteFiles(t.dataDir)).toHaveLength(300);
      for (const u of users) {
        const report = await usage.getUsage(u);
        expect(report.limits[0]).toMatchObject({ scope: 'ai_text', used: 1, reserved: 0 });
      }
    } finally {
      await t.close();
    }
  });
});
