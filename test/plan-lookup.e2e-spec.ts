import request from 'supertest';
import { ENFORCEMENT_UNAVAILABLE_BODY, UsageService } from '@app/usage-monitoring';
import { CapturingLogger } from './utils/capturing-logger';
import { createTestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { describeStore } from './utils/test-store';

const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeStore('the plan(userId) lookup', () => {
  it('has its own deadline: a 300 ms plan() is served, and its answer is kept for the next requests', async () => {
    const asked: string[] = [];
    const t = await createTestApp({
      usage: {
        plan: async (id) => {
          asked.push(id);
          await sleep(300);
          return 'free';
        },
      },
    });
    try {
      const post = () =>
        request(t.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer('slow-plan'))
          .send(chat);
      expect((await post()).status).toBe(200);
      const started = Date.now();
      for (let i = 0; i < 3; i++) expect((await post()).status).toBe(200);
      expect(Date.now() - started).toBeLessThan(900); // three requests without a 300 ms lookup each
      expect(asked).toEqual(['slow-plan']);
      expect(t.app.get(UsageService).enforcementStats().failures).toEqual({});
    } finally {
      await t.close();
    }
  });

  it('a plan() past planTimeoutMs, or one that throws, answers 503 counted as plan_lookup_failed', async () => {
    const logger = new CapturingLogger();
    const t = await createTestApp({
      logger,
      usage: {
        planTimeoutMs: 100,
        plan: async (id) => {
          if (id === 'broken') throw new Error('billing down');
          await sleep(300);
          return 'free';
        },
      },
    });
    try {
      for (const user of ['late', 'broken']) {
        const res = await request(t.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer(user))
          .send(chat);
        expect(res.status).toBe(503);
        expect(res.body).toEqual(ENFORCEMENT_UNAVAILABLE_BODY);
      }
      expect(t.app.get(UsageService).enforcementStats().failures).toEqual({ 'plan_lookup_failed:openai': 2 });
      const lines = logger.lines.filter((l) => l.includes('usage enforcement unavailable'));
      expect(lines).toEqual([expect.stringContaining('(plan_lookup_failed): the plan(userId) option')]);
      expect(lines.join('\n')).not.toMatch(/database|store/);
    } finally {
      await t.close();
    }
  });
});
