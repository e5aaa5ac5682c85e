import { APP_GUARD, APP_INTERCEPTOR } from '@nestjs/core';
import request from 'supertest';
import { MeteringInterceptor, UsageLimitGuard, UsageService } from '@app/usage-monitoring';
import { CapturingLogger } from './utils/capturing-logger';
import { createTestApp } from './utils/create-test-app';
import { bearer, TestAuthGuard } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore } from './utils/test-store';

const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };

describeStore('binding mistakes', () => {
  it('a guard and an interceptor bound globally and on the controller reserve and settle once', async () => {
    const t = await createTestApp({
      providers: [
        { provide: APP_GUARD, useClass: UsageLimitGuard },
        { provide: APP_INTERCEPTOR, useClass: MeteringInterceptor },
      ],
    });
    try {
      const post = () =>
        request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer('twice')).send(chat);
      for (let i = 0; i < 5; i++) expect((await post()).status).toBe(200);
      const refused = await post();
      expect(refused.status).toBe(429);
      expect(refused.body.usage_info).toMatchObject({ current: 5, limit: 5 });
      const rows = await queryUserDb(t, 'twice', 'SELECT input_tokens, output_tokens FROM usage_events');
      expect(rows).toEqual(Array.from({ length: 5 }, () => ({ input_tokens: 10, output_tokens: 5 })));
      const [calls] = (await t.app.get(UsageService).getUsage('twice')).limits;
      expect(calls).toMatchObject({ scope: 'ai_text', metric: 'calls', used: 5, reserved: 0 });
    } finally {
      await t.close();
    }
  });

  it('a guard that runs before authentication answers 401 and says once which order fixes it', async () => {
    const logger = new CapturingLogger();
    const t = await createTestApp({
      logger,
      authGuard: false,
      providers: [
        { provide: APP_GUARD, useClass: UsageLimitGuard },
        { provide: APP_GUARD, useClass: TestAuthGuard },
      ],
    });
    try {
      for (let i = 0; i < 3; i++) {
        const res = await request(t.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer('early'))
          .send(chat);
        expect(res.status).toBe(401);
      }
      const hints = logger.lines.filter((l) => l.includes('before your authentication'));
      expect(hints).toHaveLength(1);
      expect(hints[0]).toContain(
        'a metered request carries credentials (authorization) but no authenticated user: UsageLimitGuard ran before your authentication.',
      );
    } finally {
      await t.close();
    }
  });
});
