import request from 'supertest';
import { startDemo, type DemoApp } from './utils/demo-app';
import { describeSqlite } from './utils/test-store';
import { queryUserDbUntil } from './utils/user-db';
import { simulatedChat } from '../src/providers/simulator';
import { DEMO_ADMIN_KEY } from '../src/auth/admin-key.guard';

describeSqlite('demo app contract', () => {
  let demo: DemoApp;
  let url: string;
  let dataDir: string;
  const freeUser = 'free user/with odd:chars';

  beforeAll(async () => {
    demo = await startDemo({
      'key-free': { user: freeUser, plan: 'free' },
      'key-pro': { user: 'pro-user', plan: 'pro' },
    });
    ({ url, dataDir } = demo);
  });

  afterAll(() => demo.close());

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

    // The demo's rows reach the user's file up to a second after their responses (the journal's delay).
    const rows = await queryUserDbUntil(
      dataDir,
      'pro-user',
      'SELECT provider, model, estimated FROM usage_events ORDER BY occurred_at, provider',
      5,
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

  it('lets the admin key grant the free user 2 more calls at /usage/admin; any other key gets 403', async () => {
    // After the previous test the free user has used all 50 AI text calls.
    const key = demo.app.get<string>(DEMO_ADMIN_KEY);
    const user = encodeURIComponent(freeUser);
    const grant = { scope: 'ai_text', metric: 'calls', amount: 2, reason: 'conference demo' };
    const refused = await request(url)
      .post(`/usage/admin/users/${user}/grants`)
      .set('x-admin-key', 'guess')
      .send(grant);
    expect(refused.status).toBe(403);
    const granted = await request(url)
      .post(`/usage/admin/users/${user}/grants`)
      .set('x-admin-key', key)
      .send(grant);
    expect(granted.status).toBe(201);
    expect(granted.body).toMatchObject({ kind: 'grant', user_id: freeUser, amount: 2, actor: 'demo-admin' });
    const chat = () =>
      request(url)
        .post('/openai/v1/chat/completions')
        .set('authorization', 'Bearer key-free')
        .send({ messages: [{ role: 'user', content: 'more' }] });
    expect([(await chat()).status, (await chat()).status, (await chat()).status]).toEqual([200, 200, 429]);
    const me = await request(url).get('/usage/me').set('authorization', 'Bearer key-free');
    expect(me.body.limits[0]).toMatchObject({ scope: 'ai_text', used: 52, limit: 52 });
  });

  it('POST /articles meters two LLM calls and a search inside a service: three ledger rows, real tokens', async () => {
    const res = await request(url)
      .post('/articles')
      .set('authorization', 'Bearer key-pro')
      .send({ topic: 'usage metering' });
    expect(res.status).toBe(201);
    expect(res.body).toEqual({
      topic: 'usage metering',
      outline: expect.any(String),
      sources: [
        'https://example.com/search/1',
        'https://example.com/search/2',
        'https://example.com/search/3',
      ],
      article: expect.any(String),
    });
    // What the simulated providers reported for the service's three calls.
    const outline = simulatedChat({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Outline a short article about usage metering.' }],
      max_tokens: 200,
    });
    const draft = simulatedChat({
      model: 'gpt-4o-mini',
      messages: [
        { role: 'system', content: 'Write the article from the outline and sources.' },
        {
          role: 'user',
          content: `${outline.choices[0].message.content}\nSimulated search result 1.\nSimulated search result 2.\nSimulated search result 3.`,
        },
      ],
      max_tokens: 800,
    });
    expect(res.body.outline).toBe(outline.choices[0].message.content);
    expect(res.body.article).toBe(draft.choices[0].message.content);
    // UsageMeter.run returns before its rows commit (durable intent covers a crash): wait for the three.
    const query =
      "SELECT provider, endpoint, input_tokens, output_tokens, searches, estimated, outcome FROM usage_events WHERE endpoint LIKE 'meter:%' ORDER BY occurred_at, request_id";
    const rows = await queryUserDbUntil(dataDir, 'pro-user', query, 3);
    const llm = (u: { prompt_tokens: number; completion_tokens: number }) => ({
      provider: 'openai',
      endpoint: 'meter:openai',
      input_tokens: u.prompt_tokens,
      output_tokens: u.completion_tokens,
      searches: 0,
      estimated: 0,
      outcome: 'ok',
    });
    expect(rows).toEqual([
      llm(outline.usage),
      {
        provider: 'tavily',
        endpoint: 'meter:tavily',
        input_tokens: 0,
        output_tokens: 0,
        searches: 1,
        estimated: 0,
        outcome: 'ok',
      },
      llm(draft.usage),
    ]);
    expect(outline.usage.prompt_tokens).toBeGreaterThan(0);
  });
});
