import request from 'supertest';
import { createTestApp } from './utils/create-test-app';
import { breakDataDir } from './utils/faults';
import { bearer } from './utils/test-controllers';
import { describeStore, STORE } from './utils/test-store';

const ok = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };
const failing = { ...ok, fail: 500 };

async function run(url: string, user: string, good: number, bad: number) {
  for (let i = 0; i < good; i++)
    await request(url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(ok);
  for (let i = 0; i < bad; i++)
    await request(url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(failing);
}

describeStore('GET /health/usage', () => {
  it('has the terminus shape plus the lightweight stats, and no user ids or paths', async () => {
    const t = await createTestApp();
    try {
      const secretUser = 'plan=unlimited;secret-user@example.com';
      await run(t.url, secretUser, 3, 0);
      const res = await request(t.url).get('/health/usage');
      expect(res.status).toBe(200);
      expect(Object.keys(res.body).sort()).toEqual(['details', 'error', 'info', 'status', 'usage']);
      expect(res.body.status).toBe('ok');
      expect(res.body.info).toEqual({ usage_store: { status: 'up' } });
      expect(res.body.usage).toEqual({
        status: 'healthy',
        icon: '✅',
        recent_requests: 3,
        recent_errors: 0,
        error_rate: 0,
        timestamp: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      });
      const text = JSON.stringify(res.body);
      expect(text).not.toContain('secret-user');
      expect(text).not.toContain(t.dataDir);
      expect(text).not.toMatch(/limit|sqlite/i);
    } finally {
      await t.close();
    }
  });

  it.each([
    [95, 5, 'healthy', '✅', 5],
    [94, 6, 'warning', '⚠️', 6],
    [90, 10, 'warning', '⚠️', 10],
    [89, 11, 'critical', '🚨', 11],
  ])('%i good + %i failed requests → %s', async (good, bad, status, icon, rate) => {
    const t = await createTestApp();
    try {
      await run(t.url, 'plan=unlimited;load', good, bad);
      const res = await request(t.url).get('/health/usage');
      expect(res.status).toBe(200);
      expect(res.body.usage).toMatchObject({
        status,
        icon,
        recent_requests: 100,
        recent_errors: bad,
        error_rate: rate,
      });
    } finally {
      await t.close();
    }
  });

  it('forgets requests older than 5 minutes', async () => {
    let now = Date.UTC(2026, 10, 20, 8, 0, 0);
    const t = await createTestApp({ usage: { clock: () => now } });
    try {
      await run(t.url, 'plan=unlimited;old', 1, 1);
      expect((await request(t.url).get('/health/usage')).body.usage.recent_requests).toBe(2);
      now += 301_000;
      await run(t.url, 'plan=unlimited;old', 1, 0);
      expect((await request(t.url).get('/health/usage')).body.usage).toMatchObject({
        recent_requests: 1,
        recent_errors: 0,
        status: 'healthy',
      });
    } finally {
      await t.close();
    }
  });

  it('answers 503 with the stats when the store is down', async () => {
    if (STORE !== 'sqlite') return; // the shared store's outage is covered in shared-store.e2e-spec.ts
    const t = await createTestApp();
    const restore = breakDataDir(t.dataDir);
    try {
      const res = await request(t.url).get('/health/usage');
      expect(res.status).toBe(503);
      expect(res.body).toMatchObject({
        status: 'error',
        error: { usage_store: { status: 'down', reason: 'data directory unavailable' } },
        usage: { status: 'healthy', recent_requests: 0 },
      });
    } finally {
      restore();
      await t.close();
    }
  });
});
