import request from 'supertest';
import { UsageService } from '@app/usage-monitoring';
import { createTestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeSqlite } from './utils/test-store';

const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeSqlite('reservations that are never settled (per-user store)', () => {
  it('are released after reservationTtlMs, freeing quota and the database slot; a late settlement is recorded once', async () => {
    const t = await createTestApp({ usage: { storage: { reservationTtlMs: 400, maxOpenDataSources: 1 } } });
    try {
      const post = (user: string, body: object = chat) =>
        request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(body);
      // Five handlers that hang (a stalled upstream) hold the free plan's 5 AI calls and the only slot.
      // (`then` sends them now: supertest sends a request when it is awaited.)
      const stalled = Array.from({ length: 5 }, () =>
        post('stuck', { ...chat, delayMs: 2500 }).then((r) => r),
      );
      await sleep(150);
      expect((await post('stuck')).status).toBe(429);
      // Another user waits for the only slot (within `storage.openTimeoutMs`), past the enforcement timeout,
      // until the sweep releases the stalled reservations (400 ms after they began) and the slot with them.
      const started = Date.now();
      expect((await post('other')).status).toBe(200);
      expect(Date.now() - started).toBeGreaterThanOrEqual(200);
      expect(t.app.get(UsageService).enforcementStats().releasedByTtl).toBe(5);
      expect((await post('stuck')).status).toBe(200);

      // The stalled handlers finish after all: each is recorded once, on top of the call admitted meanwhile.
      for (const res of await Promise.all(stalled)) expect(res.status).toBe(200);
      await sleep(100);
      const [rows] = await queryUserDb<{ n: number }>(t, 'stuck', 'SELECT COUNT(*) AS n FROM usage_events');
      expect(rows.n).toBe(6);
      const calls = (await t.app.get(UsageService).getUsage('stuck')).limits.find(
        (l) => l.metric === 'calls',
      );
      expect(calls).toMatchObject({ used: 6, reserved: 0 });
    } finally {
      await t.close();
    }
  });
});
