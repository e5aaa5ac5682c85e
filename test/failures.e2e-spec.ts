import request from 'supertest';
import { ENFORCEMENT_UNAVAILABLE_BODY, UsageService } from '@app/usage-monitoring';
import { EMERGENCY_FAIL_OPEN_ENV } from '@app/usage-monitoring/usage-monitoring.constants';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { breakDataDir } from './utils/faults';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeSqlite } from './utils/test-store';

const chat = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };
const EXPECTED_503 = {
  error: 'Usage limit enforcement unavailable',
  message: 'Unable to validate usage limits right now. Please retry shortly.',
  code: 'USAGE_LIMIT_ENFORCEMENT_UNAVAILABLE',
};

describeSqlite('store unavailable (per-user SQLite)', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(() => t.close());

  it('answers the exact 503, counts the reason, reports down, and recovers without a restart', async () => {
    const restore = breakDataDir(t.dataDir);
    try {
      const res = await request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('newcomer'))
        .send(chat);
      expect(res.status).toBe(503);
      expect(res.body).toEqual(EXPECTED_503);
      expect(ENFORCEMENT_UNAVAILABLE_BODY).toEqual(EXPECTED_503);
      expect(res.headers['retry-after']).toBe('5');
      expect(JSON.stringify(res.body)).not.toMatch(/SQLITE|ENOTDIR|usage-monitoring-test/);
      const health = await request(t.url).get('/health/usage');
      expect(health.status).toBe(503);
      expect(health.body.error).toEqual({
        usage_store: { status: 'down', reason: 'data directory unavailable' },
      });
      expect(t.app.get(UsageService).enforcementStats().failures).toEqual({
        'database_init_failed:openai': 1,
      });
    } finally {
      restore();
    }
    const again = await request(t.url)
      .post('/openai/v1/chat/completions')
      .set('authorization', bearer('newcomer'))
      .send(chat);
    expect(again.status).toBe(200);
    expect((await request(t.url).get('/health/usage')).status).toBe(200);
    const rows = await queryUserDb<{ n: number }>(t, 'newcomer', 'SELECT COUNT(*) AS n FROM usage_events');
    expect(rows[0].n).toBe(1);
  });

  it('waits for a free database slot up to openTimeoutMs, not enforcementTimeoutMs; then answers 503 and gives the late reservation back', async () => {
    const t2 = await createTestApp({
      usage: { storage: { maxOpenDataSources: 1, openTimeoutMs: 1000 }, enforcementTimeoutMs: 100 },
    });
    const post = (user: string, body: object = chat) =>
      request(t2.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(body);
    /** `user`'s request while `slow` holds the only slot for `delayMs`: its status and how long it waited. */
    const behind = async (slow: string, delayMs: number, user: string) => {
      const slowDone = post(slow, { ...chat, delayMs }).then((r) => r.status);
      await new Promise((r) => setTimeout(r, 100));
      const started = Date.now();
      const res = await post(user);
      return { res, waited: Date.now() - started, slow: await slowDone };
    };
    try {
      // The slot frees up after about 400 ms: past the enforcement timeout, within the open timeout.
      const freed = await behind('slow-1', 500, 'patient');
      expect(freed.res.status).toBe(200);
      expect(freed.waited).toBeGreaterThanOrEqual(250);
      expect(freed.slow).toBe(200);
      // It does not within the open timeout: 503 at about 1 s, whatever the enforcement timeout says.
      const blocked = await behind('slow-2', 2500, 'blocked');
      expect(blocked.res.status).toBe(503);
      expect(blocked.res.body).toEqual(EXPECTED_503);
      expect(blocked.waited).toBeGreaterThanOrEqual(1000);
      expect(blocked.waited).toBeLessThan(2000);
      expect(blocked.slow).toBe(200);
      expect(t2.app.get(UsageService).enforcementStats().failures).toEqual({
        'database_session_unavailable:openai': 1,
      });
      const ok = await post('blocked');
      expect(ok.status).toBe(200);
      const [snapshot] = await t2.probe.store.readCounters('blocked', [
        {
          scope: 'ai_text',
          metric: 'calls',
          periodKey: (await t2.app.get(UsageService).getUsage('blocked')).limits[0].period_key,
        },
      ]);
      expect(snapshot).toMatchObject({ used: 1, reserved: 0 });
    } finally {
      await t2.close();
    }
  });
});

describeSqlite(`${EMERGENCY_FAIL_OPEN_ENV} (per-user SQLite)`, () => {
  const previous = process.env[EMERGENCY_FAIL_OPEN_ENV];
  afterEach(() => {
    if (previous === undefined) delete process.env[EMERGENCY_FAIL_OPEN_ENV];
    else process.env[EMERGENCY_FAIL_OPEN_ENV] = previous;
  });

  it.each(['1', 'true', 'YES', 'on'])(
    '=%s lets requests through while the store is down and counts them',
    async (value) => {
      process.env[EMERGENCY_FAIL_OPEN_ENV] = value;
      const t = await createTestApp();
      const restore = breakDataDir(t.dataDir);
      try {
        const res = await request(t.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer('u'))
          .send(chat);
        expect(res.status).toBe(200);
        const stats = t.app.get(UsageService).enforcementStats();
        expect(stats.failOpen).toEqual({ openai: 1 });
        expect(stats.failures).toEqual({ 'database_init_failed:openai': 1 });
      } finally {
        restore();
        await t.close();
      }
    },
  );

  it('is read at start-up only, and other values keep failing closed', async () => {
    process.env[EMERGENCY_FAIL_OPEN_ENV] = 'maybe';
    const t = await createTestApp();
    process.env[EMERGENCY_FAIL_OPEN_ENV] = 'true';
    const restore = breakDataDir(t.dataDir);
    try {
      const res = await request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('u'))
        .send(chat);
      expect(res.status).toBe(503);
    } finally {
      restore();
      await t.close();
    }
  });
});
