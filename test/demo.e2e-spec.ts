import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import request from 'supertest';
import { rmSync } from 'node:fs';
import { AppModule } from '../src/app.module';
import { tempDataDir } from './utils/create-test-app';
import { describeSqlite } from './utils/test-store';
import { queryUserDb } from './utils/user-db';

describeSqlite('demo app contract', () => {
  let app: INestApplication;
  let url: string;
  const dataDir = tempDataDir();
  const freeUser = 'free user/with odd:chars';

  beforeAll(async () => {
    process.env.USAGE_DATA_DIR = dataDir;
    process.env.DEMO_API_KEYS = JSON.stringify({
      'key-free': { user: freeUser, plan: 'free' },
      'key-pro': { user: 'pro-user', plan: 'pro' },
    });
    const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    await app.listen(0, '127.0.0.1');
    url = `http://127.0.0.1:${(app.getHttpServer().address() as { port: number }).port}`;
  });

  afterAll(async () => {
    await app.close();
    delete process.env.USAGE_DATA_DIR;
    delete process.env.DEMO_API_KEYS;
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('serves each provider’s shape where its SDK sends the key', async () => {
    const openai = await request(url)
      .post('/openai/v1/chat/completions')
      .set('authorization', 'Bearer key-pro')
      .send({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 });
    expect(openai.status).toBe(200);
    expect(openai.body.usage).toEqual({
      prompt_tokens: 3,
      completion_tokens: expect.any(Number),
      total_tokens: expect.any(Number),
    });
    const again = await request(url)
      .post('/openai/v1/chat/completions')
      .set('authorization', 'Bearer key-pro')
      .send({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 });
    expect(again.body.usage).toEqual(openai.body.usage);

    const anthropic = await request(url)
      .post('/anthropic/v1/messages')
      .set('x-api-key', 'key-pro')
      .send({ model: 'claude-3.5-sonnet', max_tokens: 64, messages: [{ role: 'user', content: 'Hi' }] });
    expect(anthropic.status).toBe(200);
    expect(anthropic.body.usage).toEqual({ input_tokens: 1, output_tokens: expect.any(Number) });

    const gemini = await request(url)
      .post('/gemini/v1beta/models/gemini-2.5-flash:generateContent')
      .set('x-goog-api-key', 'key-pro')
      .send({ contents: [{ role: 'user', parts: [{ text: 'Hello Gemini' }] }] });
    expect(gemini.status).toBe(200);
    expect(gemini.body.usageMetadata.promptTokenCount).toBe(3);
    expect(gemini.body.modelVersion).toBe('gemini-2.5-flash');

    const tavily = await request(url)
      .post('/tavily/search')
      .set('authorization', 'Bearer key-pro')
      .send({ query: 'nestjs' });
    expect(tavily.status).toBe(200);
    expect(tavily.body.results).toHaveLength(3);

    const rows = await queryUserDb(
      dataDir,
      'pro-user',
      'SELECT provider, model, estimated FROM usage_events ORDER BY occurred_at, provider',
    );
    expect(rows.map((r) => r.provider)).toEqual(['openai', 'openai', 'anthropic', 'gemini', 'tavily']);
    expect(rows.map((r) => r.model)).toEqual([
      'gpt-4o-mini',
      'gpt-4o-mini',
      'claude-3.5-sonnet',
      'gemini-2.5-flash',
      null,
    ]);
    expect(rows.every((r) => r.estimated === 0)).toBe(true);
  });

  it('answers 401 for a missing or unknown key on metered routes and /usage/me; /hello needs none', async () => {
    expect((await request(url).get('/hello')).status).toBe(200);
    expect((await request(url).post('/openai/v1/chat/completions').send({})).status).toBe(401);
    expect(
      (await request(url).post('/openai/v1/chat/completions').set('authorization', 'Bearer nope').send({}))
        .status,
    ).toBe(401);
    expect((await request(url).get('/usage/me')).status).toBe(401);
  });

  it('gives a free user 50 AI text calls across providers, then 429; /usage/me shows it', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 51; i++) {
      const res =
        i % 2 === 0
          ? await request(url)
              .post('/openai/v1/chat/completions')
              .set('authorization', 'Bearer key-free')
              .send({ messages: [{ role: 'user', content: `q${i}` }] })
          : await request(url)
              .post('/anthropic/v1/messages')
              .set('x-api-key', 'key-free')
              .send({ max_tokens: 32, messages: [{ role: 'user', content: `q${i}` }] });
      codes.push(res.status);
    }
    expect(codes.slice(0, 50).every((c) => c === 200)).toBe(true);
    expect(codes[50]).toBe(429);
    const me = await request(url).get('/usage/me').set('authorization', 'Bearer key-free');
    expect(me.status).toBe(200);
    expect(me.body.plan).toBe('free');
    expect(me.body.limits[0]).toMatchObject({
      scope: 'ai_text',
      metric: 'calls',
      used: 50,
      limit: 50,
      percentage: 100,
    });
    const health = await request(url).get('/health/usage');
    expect(health.status).toBe(200);
    expect(JSON.stringify(health.body)).not.toContain('odd:chars');
  });
});
