import request from 'supertest';
import { UsageAlerts, UsageService, type UsageAlert } from '@app/usage-monitoring';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { bearer, GuardOnlyController } from './utils/test-controllers';
import { hasUserData, queryUserDb } from './utils/user-db';
import { describeStore } from './utils/test-store';

const NOV_20 = Date.UTC(2026, 10, 20, 8, 0, 0);
const chat = (extra: object = {}) => ({
  messages: [{ role: 'user', content: 'hello there' }],
  max_tokens: 20,
  ...extra,
});
const EVENT_COLUMNS =
  'user_id, provider, model, endpoint, method, status_code, input_tokens, output_tokens, cost_micros, searches, estimated, outcome, period_key';

describeStore('metering', () => {
  let t: TestApp;
  const alerts: UsageAlert[] = [];
  beforeAll(async () => {
    t = await createTestApp({ usage: { clock: () => NOV_20, onAlert: (a) => alerts.push(a) } });
  });
  afterAll(() => t.close());

  const post = (user: string, body: object, path = '/openai/v1/chat/completions') =>
    request(t.url).post(path).set('authorization', bearer(user)).send(body);

  it('records the provider’s own usage exactly and leaves the response untouched', async () => {
    const res = await post('exact', chat({ report: { prompt: 123, completion: 45 }, reply: 'ok' }));
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      id: 'chatcmpl-test',
      object: 'chat.completion',
      model: 'gpt-4o-mini',
      choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 123, completion_tokens: 45 },
    });
    const rows = await queryUserDb(t, 'exact', `SELECT ${EVENT_COLUMNS} FROM usage_events`);
    expect(rows).toEqual([
      {
        user_id: 'exact',
        provider: 'openai',
        model: 'gpt-4o-mini',
        endpoint: '/openai/v1/chat/completions',
        method: 'POST',
        status_code: 200,
        input_tokens: 123,
        output_tokens: 45,
        // gpt-4o-mini: 123 × $0.15/M + 45 × $0.60/M = 45.45 µ$, rounded up.
        cost_micros: 46,
        searches: 0,
        estimated: 0,
        outcome: 'ok',
        period_key: 'month:2026-11-01',
      },
    ]);
    const [counter] = await queryUserDb<{ used: number }>(
      t,
      'exact',
      "SELECT used FROM usage_counters WHERE metric = 'cost'",
    );
    expect(counter.used).toBe(46);
  });

  it('records the request’s and the response’s sizes as they went over the wire', async () => {
    // Escapes, a surrogate pair and two-byte characters: the JSON text's bytes, not the value's characters.
    const reply = 'line one\nline "two"\t\\ — déjà vu 😀 \u0001';
    const body = chat({ reply, messages: [{ role: 'user', content: 'sizes, s’il vous plaît 🙂' }] });
    const res = await post('sizes', body);
    expect(res.status).toBe(200);
    expect(res.body.choices[0].message.content).toBe(reply);
    const [row] = await queryUserDb<{ request_bytes: number; response_bytes: number }>(
      t,
      'sizes',
      'SELECT request_bytes, response_bytes FROM usage_events',
    );
    expect(row).toEqual({
      request_bytes: Buffer.byteLength(JSON.stringify(body)),
      response_bytes: Number(res.headers['content-length']),
    });
    expect(row.response_bytes).toBe(Buffer.byteLength(res.text));
  });

  it('estimates and flags usage when the provider reports none', async () => {
    const res = await post('estimated', chat({ omitUsage: true, reply: 'four words of reply' }));
    expect(res.status).toBe(200);
    const rows = await queryUserDb(
      t,
      'estimated',
      'SELECT input_tokens, output_tokens, estimated FROM usage_events',
    );
    // o200k_base (gpt-4o-mini): "hello there" → 2 tokens, "four words of reply" → 4.
    expect(rows).toEqual([{ input_tokens: 2, output_tokens: 4, estimated: 1 }]);
  });

  it('records failed calls (status, outcome) and passes the error through unchanged', async () => {
    const res = await post('failing', chat({ fail: 502 }));
    expect(res.status).toBe(502);
    expect(res.body).toEqual({ error: 'upstream failed' });
    const rows = await queryUserDb(
      t,
      'failing',
      'SELECT status_code, outcome, input_tokens, output_tokens FROM usage_events',
    );
    expect(rows).toEqual([{ status_code: 502, outcome: 'error', input_tokens: 0, output_tokens: 0 }]);
  });

  it('detects providers by whole path segments; unmetered routes open no database', async () => {
    expect((await post('detected', chat(), '/detect/openai/complete')).status).toBe(200);
    const rows = await queryUserDb(t, 'detected', 'SELECT provider, endpoint FROM usage_events');
    expect(rows).toEqual([{ provider: 'openai', endpoint: '/detect/openai/complete' }]);

    expect(
      (await request(t.url).get('/detect/plain').set('authorization', bearer('plain-user'))).status,
    ).toBe(200);
    expect(
      (await request(t.url).get('/openai/v1/models').set('authorization', bearer('plain-user'))).status,
    ).toBe(200);
    // `gpt` and `openai` inside a longer segment name no provider.
    expect(
      (
        await request(t.url)
          .get('/detect/settings/gpt-preferences')
          .set('authorization', bearer('plain-user'))
      ).body,
    ).toEqual({ ok: true });
    expect(await hasUserData(t, 'plain-user')).toBe(false);
  });

  it('never lets the client’s User-Agent decide, unless the host turns it on', async () => {
    const get = (app: TestApp, user: string, ua: string) =>
      request(app.url).get('/detect/plain').set('user-agent', ua).set('authorization', bearer(user));
    expect((await get(t, 'ua-sdk', 'OpenAI/JS 4.77.0')).status).toBe(200);
    expect((await get(t, 'ua-curl', 'curl/8.5.0')).status).toBe(200);
    expect((await get(t, 'ua-bot', 'Mozilla/5.0 (compatible; GPTBot/1.2)')).status).toBe(200);
    expect(await hasUserData(t, 'ua-sdk')).toBe(false);
    expect(await hasUserData(t, 'ua-curl')).toBe(false);
    expect(await hasUserData(t, 'ua-bot')).toBe(false);

    const opted = await createTestApp({ usage: { detectProviders: 'path-and-user-agent' } });
    try {
      expect((await get(opted, 'ua-sdk', 'OpenAI/JS 4.77.0')).status).toBe(200);
      expect((await get(opted, 'ua-curl', 'curl/8.5.0')).status).toBe(200);
      const rows = await queryUserDb(opted, 'ua-sdk', 'SELECT provider, method FROM usage_events');
      expect(rows).toEqual([{ provider: 'openai', method: 'GET' }]);
      expect(await hasUserData(opted, 'ua-curl')).toBe(false);
    } finally {
      await opted.close();
    }
  });

  it('charges a model the price book does not know at its provider’s highest known price, flagged', async () => {
    const res = await post(
      'new-model',
      chat({ model: 'my-new-model-2027', report: { prompt: 1000, completion: 1000 } }),
    );
    expect(res.status).toBe(200);
    const rows = await queryUserDb(
      t,
      'new-model',
      'SELECT model, cost_micros, price_version FROM usage_events',
    );
    // o1-pro's $150 / $600 per 1M tokens: 1,000 tokens each way cost $0.75, not gpt-4o-mini's $0.00075.
    expect(rows).toEqual([
      {
        model: 'my-new-model-2027',
        cost_micros: 750_000,
        price_version: expect.stringMatching(/^highest:openai:genai-prices@/),
      },
    ]);
  });

  it('alerts once per threshold: 80 % at the 4th of 5 calls, 90 % and 100 % at the 5th', async () => {
    const seen: UsageAlert[] = [];
    const sub = t.app.get(UsageAlerts).alerts$.subscribe((a) => seen.push(a));
    alerts.length = 0;
    for (let i = 0; i < 7; i++) await post('alerted', chat());
    // Published once the usage that crossed them has committed: with durable intent (the default) that
    // may be just after the response.
    const mine = () => alerts.filter((a) => a.userId === 'alerted');
    for (const until = Date.now() + 2_000; mine().length < 3 && Date.now() < until;)
      await new Promise((r) => setTimeout(r, 10));
    sub.unsubscribe();
    const fired = mine().map((a) => [a.limitId, a.threshold, a.used]);
    expect(fired).toEqual([
      ['ai_text:calls:month', 80, 4],
      ['ai_text:calls:month', 90, 5],
      ['ai_text:calls:month', 100, 5],
    ]);
    expect(seen).toHaveLength(3);
    const rows = await queryUserDb(
      t,
      'alerted',
      'SELECT limit_id, threshold, used, max_value FROM usage_alerts ORDER BY threshold',
    );
    expect(rows).toEqual([
      { limit_id: 'ai_text:calls:month', threshold: 80, used: 4, max_value: 5 },
      { limit_id: 'ai_text:calls:month', threshold: 90, used: 5, max_value: 5 },
      { limit_id: 'ai_text:calls:month', threshold: 100, used: 5, max_value: 5 },
    ]);
  });

  it('settles a request whose client left before the answer', async () => {
    const req = request(t.url)
      .post('/openai/v1/chat/completions')
      .set('authorization', bearer('leaver'))
      .send(chat({ delayMs: 300 }));
    setTimeout(() => {
      req.abort();
    }, 50);
    await expect(req).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 500));
    const rows = await queryUserDb(
      t,
      'leaver',
      'SELECT status_code, outcome, input_tokens, output_tokens FROM usage_events',
    );
    expect(rows).toEqual([{ status_code: 200, outcome: 'ok', input_tokens: 10, output_tokens: 5 }]);
  });

  it('gives the reservation back when no interceptor settles it', async () => {
    const t2 = await createTestApp({ controllers: [GuardOnlyController] });
    try {
      for (let i = 0; i < 8; i++) {
        expect(
          (await request(t2.url).post('/guard-only').set('authorization', bearer('careless')).send({}))
            .status,
        ).toBe(200);
      }
      // The release runs when the response closes; on the shared store it is a statement of its own.
      let report = await t2.app.get(UsageService).getUsage('careless');
      for (let i = 0; i < 20 && report.limits[0].reserved !== 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
        report = await t2.app.get(UsageService).getUsage('careless');
      }
      expect(report.limits[0]).toMatchObject({ used: 0, reserved: 0 });
    } finally {
      await t2.close();
    }
  });

  it('reports a user’s own usage against the plan', async () => {
    const report = await t.app.get(UsageService).getUsage('exact');
    expect(report.plan).toBe('free');
    expect(report.limits.map((l) => [l.scope, l.metric, l.used, l.limit, l.remaining])).toEqual([
      ['ai_text', 'calls', 1, 5, 4],
      ['tavily', 'calls', 0, 3, 3],
      ['*', 'cost', 0.000046, 2, 1.999954],
    ]);
    expect(report.limits[0].providers).toEqual(['gemini', 'openai', 'anthropic', 'mistral']);
    expect(report.limits[0].percentage).toBe(20);
  });
});

describeStore('unknown models', () => {
  it("unknownModels: 'deny' refuses a request naming an unpriced model with 400, before any usage", async () => {
    const t = await createTestApp({ usage: { unknownModels: 'deny' } });
    try {
      const res = await request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('picky'))
        .send({ ...chat(), model: 'gpt-9-ultra' });
      expect(res.status).toBe(400);
      expect(res.body).toEqual({
        error: 'Unknown model',
        message:
          'Model "gpt-9-ultra" has no price, so usage on it cannot be limited; requests naming it are refused.',
        code: 'USAGE_UNKNOWN_MODEL',
        provider: 'openai',
      });
      expect(await hasUserData(t, 'picky')).toBe(false);
      const dated = await request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('picky'))
        .send({ ...chat(), model: 'gpt-4o-mini-2024-07-18' });
      expect(dated.status).toBe(200);
    } finally {
      await t.close();
    }
  });
});

describeStore('recordAllRequests', () => {
  it('writes api_requests rows for identified unmetered requests when on', async () => {
    const t = await createTestApp({ usage: { recordAllRequests: true } });
    try {
      expect((await request(t.url).get('/detect/plain').set('authorization', bearer('watched'))).status).toBe(
        200,
      );
      expect((await request(t.url).get('/detect/plain')).status).toBe(200);
      // The row is written after the response (on PostgreSQL by a statement of its own; with SQLite the
      // user's file may not exist until the journal applies it): wait up to 5 s.
      const sql = 'SELECT provider, path, method, status_code FROM api_requests';
      const read = () =>
        queryUserDb(t, 'watched', sql).catch((e: Error) => {
          if (e.message.startsWith('no database file')) return [];
          throw e;
        });
      let rows = await read();
      for (const deadline = Date.now() + 5_000; !rows.length && Date.now() < deadline;) {
        await new Promise((r) => setTimeout(r, 25));
        rows = await read();
      }
      expect(rows).toEqual([{ provider: null, path: '/detect/plain', method: 'GET', status_code: 200 }]);
      const events = await queryUserDb<{ n: number }>(t, 'watched', 'SELECT COUNT(*) AS n FROM usage_events');
      expect(events[0].n).toBe(0);
    } finally {
      await t.close();
    }
  });
});
