import request from 'supertest';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { PerUserSqliteStore } from '@app/usage-monitoring/storage/sqlite/per-user-sqlite.store';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore, SQLITE_DRIVER } from './utils/test-store';

const NOV_15_NOON = Date.UTC(2026, 10, 15, 12, 0, 0);
const DEC_1 = Date.UTC(2026, 11, 1);
const chat = (extra: object = {}) => ({
  messages: [{ role: 'user', content: 'hello there' }],
  max_tokens: 20,
  ...extra,
});

describeStore('limits', () => {
  let t: TestApp;
  let now = NOV_15_NOON;

  beforeAll(async () => {
    t = await createTestApp({ usage: { clock: () => now } });
  });
  afterAll(() => t.close());
  beforeEach(() => {
    now = NOV_15_NOON;
  });

  const post = (user: string, path = '/openai/v1/chat/completions', body: object = chat()) =>
    request(t.url).post(path).set('authorization', bearer(user)).send(body);

  it("runs on this project's store and SQLite driver", () => {
    if (t.store === 'sqlite') expect((t.probe.store as PerUserSqliteStore).driver).toBe(SQLITE_DRIVER);
    else expect(t.probe.store).not.toBeInstanceOf(PerUserSqliteStore);
  });

  it('admits N calls, then answers 429 with the exact body and headers; a new period admits again', async () => {
    const user = 'alice';
    for (let i = 0; i < 5; i++) expect((await post(user)).status).toBe(200);
    const refused = await post(user);
    expect(refused.status).toBe(429);
    expect(refused.body).toEqual({
      error: 'Usage limit exceeded',
      message:
        'Monthly calls limit for ai_text reached (5 of 5 used). It resets at 2026-12-01T00:00:00.000Z.',
      code: 'USAGE_LIMIT_CALLS',
      provider: 'openai',
      usage_info: {
        metric: 'calls',
        scope: 'ai_text',
        period: 'month',
        current: 5,
        limit: 5,
        percentage: 100,
        reset_at: '2026-12-01T00:00:00.000Z',
      },
    });
    const reset = String((DEC_1 - NOV_15_NOON) / 1000);
    expect(refused.headers['retry-after']).toBe(reset);
    expect(refused.headers['ratelimit-policy']).toBe('"ai_text:calls:month";q=5;w=2592000');
    expect(refused.headers['ratelimit']).toBe(`"ai_text:calls:month";r=0;t=${reset}`);
    expect(refused.headers['x-ratelimit-limit']).toBe('5');
    expect(refused.headers['x-ratelimit-remaining']).toBe('0');
    expect(refused.headers['x-ratelimit-reset']).toBe(reset);
    expect(refused.headers['x-should-retry']).toBe('false');

    // The group is shared: anthropic is refused too.
    const other = await post(user, '/anthropic/v1/messages', { max_tokens: 5 });
    expect(other.status).toBe(429);
    expect(other.body.provider).toBe('anthropic');

    now = DEC_1 + 1000;
    expect((await post(user)).status).toBe(200);
    const counters = await queryUserDb<{ period_key: string; used: number }>(
      t,
      user,
      "SELECT period_key, used FROM usage_counters WHERE metric = 'calls' ORDER BY period_key",
    );
    expect(counters).toEqual([
      { period_key: 'month:2026-11-01', used: 5 },
      { period_key: 'month:2026-12-01', used: 1 },
    ]);
  });

  it('omits x-should-retry when the limit resets within a minute', async () => {
    const user = 'plan=perminute;carol';
    const t2 = await createTestApp({
      usage: {
        clock: () => now,
        plans: [{ name: 'perminute', limits: [{ metric: 'calls', scope: '*', period: 'minute', max: 1 }] }],
        defaultPlan: 'perminute',
      },
    });
    try {
      now = Date.UTC(2026, 10, 15, 12, 0, 30);
      expect(
        (
          await request(t2.url)
            .post('/openai/v1/chat/completions')
            .set('authorization', bearer(user))
            .send(chat())
        ).status,
      ).toBe(200);
      const res = await request(t2.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer(user))
        .send(chat());
      expect(res.status).toBe(429);
      expect(res.headers['retry-after']).toBe('30');
      expect(res.headers['x-should-retry']).toBeUndefined();
      expect(res.body.message).toBe(
        'Per-minute calls limit for * reached (1 of 1 used). It resets at 2026-11-15T12:01:00.000Z.',
      );
    } finally {
      await t2.close();
    }
  });

  it('300 parallel requests with 100 calls left: exactly 100 admitted, counters and ledger agree', async () => {
    const user = 'plan=hundred;parallel';
    const results = await Promise.all(Array.from({ length: 300 }, () => post(user)));
    const codes = results.map((r) => r.status);
    expect(codes.filter((c) => c === 200)).toHaveLength(100);
    expect(codes.filter((c) => c === 429)).toHaveLength(200);
    const [counter] = await queryUserDb<{ used: number }>(
      t,
      user,
      "SELECT used FROM usage_counters WHERE metric = 'calls'",
    );
    expect(counter.used).toBe(100);
    const [ledger] = await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM usage_events');
    expect(ledger.n).toBe(100);
    const [requests] = await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM api_requests');
    expect(requests.n).toBe(100);
  });

  it('a token limit under 300 parallel requests whose usage settles below the estimate stays exact', async () => {
    const user = 'plan=tokens;parallel';
    const body = chat({ max_tokens: 200, report: { prompt: 10, completion: 50 } });
    const results = await Promise.all(Array.from({ length: 300 }, () => post(user, undefined, body)));
    const admitted = results.filter((r) => r.status === 200).length;
    expect(results.every((r) => r.status === 200 || r.status === 429)).toBe(true);
    // Each reserves 2 (prompt estimate) + 200 (max_tokens) and settles 60.
    expect(admitted).toBeGreaterThanOrEqual(Math.floor(10_000 / 202));
    const [counter] = await queryUserDb<{ used: number }>(
      t,
      user,
      "SELECT used FROM usage_counters WHERE metric = 'tokens'",
    );
    expect(counter.used).toBe(60 * admitted);
    expect(counter.used).toBeLessThanOrEqual(10_000);
    const [ledger] = await queryUserDb<{ n: number; tokens: number }>(
      t,
      user,
      'SELECT COUNT(*) AS n, SUM(input_tokens + output_tokens) AS tokens FROM usage_events',
    );
    expect(ledger).toEqual({ n: admitted, tokens: 60 * admitted });
    const [snapshot] = await t.probe.store.readCounters(user, [
      { scope: 'ai_text', metric: 'tokens', periodKey: 'month:2026-11-01' },
    ]);
    expect(snapshot.reserved).toBe(0);
    const refused = results.find((r) => r.status === 429)!;
    expect(refused.body.code).toBe('USAGE_LIMIT_TOKENS');
  });

  it('max 0 allows nothing; an absent limit is unlimited', async () => {
    const zero = await post('plan=zero;z');
    expect(zero.status).toBe(429);
    expect(zero.body.message).toBe(
      'Monthly calls limit for * allows none. It resets at 2026-12-01T00:00:00.000Z.',
    );
    expect(zero.body.usage_info).toMatchObject({ current: 0, limit: 0, percentage: 100 });
    for (let i = 0; i < 20; i++) expect((await post('plan=unlimited;u')).status).toBe(200);
  });

  it('a cost limit refuses a request whose estimate would pass it, with USAGE_LIMIT_COST', async () => {
    // gpt-4o-mini output at $0.60 per 1M tokens: 4M max tokens is estimated at $2.40 > $2.
    const res = await post('costly', undefined, chat({ max_tokens: 4_000_000 }));
    expect(res.status).toBe(429);
    expect(res.body.code).toBe('USAGE_LIMIT_COST');
    expect(res.body.usage_info).toMatchObject({ metric: 'cost', scope: '*', current: 0, limit: 2 });
    expect(res.headers['x-ratelimit-limit']).toBe('2.000000');
    expect(res.headers['ratelimit-policy']).toBe('"*:cost:month";q=2000000;w=2592000');
  });

  it('says when the request alone may cost more than remains, and names max_tokens as the way to ask for less', async () => {
    // gpt-4o at $10 per 1M output tokens: the default 1,024 output tokens are estimated at $0.01024 > $0.01.
    const body = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hello there' }] };
    const res = await post('plan=cents;c', undefined, body);
    expect(res.status).toBe(429);
    expect(res.body.code).toBe('USAGE_LIMIT_COST');
    expect(res.body.message).toMatch(
      /^This request may cost up to \$0\.0102\d\d; \$0\.010000 remains of the monthly cost limit for \* \(\$0\.000000 of \$0\.010000 used\)\. Ask for fewer output tokens \(max_tokens\) to need less\. It resets at 2026-12-01T00:00:00\.000Z\.$/,
    );
    expect((await post('plan=cents;c', undefined, { ...body, max_tokens: 100 })).status).toBe(200);
  });

  it('per-request providers have their own counter', async () => {
    const user = 'searcher';
    for (let i = 0; i < 3; i++) expect((await post(user, '/tavily/search', { query: 'q' })).status).toBe(200);
    const res = await post(user, '/tavily/search', { query: 'q' });
    expect(res.status).toBe(429);
    expect(res.body).toMatchObject({
      provider: 'tavily',
      usage_info: { scope: 'tavily', current: 3, limit: 3 },
    });
    const rows = await queryUserDb<{ searches: number; cost_micros: number }>(
      t,
      user,
      'SELECT searches, cost_micros FROM usage_events',
    );
    expect(rows).toEqual([
      { searches: 1, cost_micros: 1000 },
      { searches: 1, cost_micros: 1000 },
      { searches: 1, cost_micros: 1000 },
    ]);
  });
});
