import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import request from 'supertest';
import { UsageAdminService, UsageService, type UsageAlert } from '@app/usage-monitoring';
import { normalizeOptions } from '@app/usage-monitoring/usage-monitoring.normalized-options';
import { createTestApp, planFromUserId, TEST_PLANS, type TestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore } from './utils/test-store';

const NOV_15_NOON = Date.UTC(2026, 10, 15, 12, 0, 0);
const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };
const SHADOW_PLANS = [
  ...TEST_PLANS,
  {
    // Enforces 100 calls; tries 50.
    name: 'trial',
    limits: [
      { metric: 'calls' as const, scope: 'openai', period: 'month' as const, max: 100 },
      {
        metric: 'calls' as const,
        scope: 'openai',
        period: 'month' as const,
        max: 50,
        mode: 'shadow' as const,
      },
    ],
  },
  // Only a shadow limit: nothing is enforced.
  {
    name: 'shadowonly',
    limits: [
      {
        metric: 'calls' as const,
        scope: 'openai',
        period: 'month' as const,
        max: 3,
        mode: 'shadow' as const,
      },
    ],
  },
];

/** Collects on demand, as a scrape does. */
class CollectingReader extends MetricReader {
  protected onShutdown = async () => undefined;
  protected onForceFlush = async () => undefined;
}

describeStore('shadow limits', () => {
  let t: TestApp;
  const alerts: UsageAlert[] = [];
  const reader = new CollectingReader();
  const provider = new MeterProvider({ readers: [reader] });

  beforeAll(async () => {
    t = await createTestApp({
      usage: {
        plans: SHADOW_PLANS,
        plan: planFromUserId,
        clock: () => NOV_15_NOON,
        enforcementTimeoutMs: 5_000,
        onAlert: (a) => alerts.push(a),
        metrics: { meterProvider: provider },
      },
    });
  });
  afterAll(async () => {
    await t.close();
    await provider.shutdown();
  });

  const post = (user: string) =>
    request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat);
  const flagged = (user: string) =>
    queryUserDb<{ shadow_refused: string | null; n: number }>(
      t,
      user,
      "SELECT shadow_refused, COUNT(*) AS n FROM usage_events GROUP BY shadow_refused ORDER BY coalesce(shadow_refused, '')",
    );
  const decisions = async () => {
    const { resourceMetrics } = await reader.collect();
    return Object.fromEntries<number>(
      resourceMetrics.scopeMetrics
        .flatMap((s) => s.metrics)
        .filter((m) => m.descriptor.name === 'usage_monitoring.decisions')
        .flatMap((m) =>
          m.dataPoints.map((p) => [
            `${String(p.attributes['usage_monitoring.decision'])}:${String(p.attributes['usage_monitoring.code'])}`,
            p.value as number,
          ]),
        ),
    );
  };

  it('at 100 % a shadow limit still admits: 200 parallel requests, exactly the enforced 100 admitted, the 50 over the shadow limit flagged, counted and alerted', async () => {
    const user = 'plan=trial;parallel';
    const before = await decisions();
    const codes = (await Promise.all(Array.from({ length: 200 }, () => post(user)))).map((r) => r.status);
    expect(codes.filter((c) => c === 200)).toHaveLength(100);
    expect(codes.filter((c) => c === 429)).toHaveLength(100);
    expect(await flagged(user)).toEqual([
      { shadow_refused: null, n: 50 },
      { shadow_refused: 'openai:calls:month:shadow', n: 50 },
    ]);
    const after = await decisions();
    expect(
      (after['shadow_refused:USAGE_LIMIT_CALLS'] ?? 0) - (before['shadow_refused:USAGE_LIMIT_CALLS'] ?? 0),
    ).toBe(50);
    const mine = alerts
      .filter((a) => a.userId === user)
      .map(({ limitId, threshold, used, max, shadow }) => ({ limitId, threshold, used, max, shadow }))
      .sort((a, b) => a.limitId.localeCompare(b.limitId) || a.threshold - b.threshold);
    expect(mine).toEqual([
      { limitId: 'openai:calls:month', threshold: 80, used: 80, max: 100, shadow: undefined },
      { limitId: 'openai:calls:month', threshold: 90, used: 90, max: 100, shadow: undefined },
      { limitId: 'openai:calls:month', threshold: 100, used: 100, max: 100, shadow: undefined },
      { limitId: 'openai:calls:month:shadow', threshold: 80, used: 40, max: 50, shadow: true },
      { limitId: 'openai:calls:month:shadow', threshold: 90, used: 45, max: 50, shadow: true },
      { limitId: 'openai:calls:month:shadow', threshold: 100, used: 50, max: 50, shadow: true },
    ]);
    // The 429 is the enforced limit's; the user's report shows only enforced limits.
    const refused = await post(user);
    expect(refused.body.usage_info).toMatchObject({ scope: 'openai', current: 100, limit: 100 });
    const report = await t.app.get(UsageService).getUsage(user);
    expect(report.limits.map((l) => [l.scope, l.metric, l.limit, l.used])).toEqual([
      ['openai', 'calls', 100, 100],
    ]);
  });

  it('a plan of shadow limits only refuses nothing and flags every request past the limit', async () => {
    const user = 'plan=shadowonly;sequential';
    for (let i = 0; i < 10; i++) expect((await post(user)).status).toBe(200);
    expect(await flagged(user)).toEqual([
      { shadow_refused: null, n: 3 },
      { shadow_refused: 'openai:calls:month:shadow', n: 7 },
    ]);
  });

  it('grants count for the shadow limit of the same counter; a shadow limit cannot be overridden', async () => {
    const user = 'plan=trial;granted';
    const admin = t.app.get(UsageAdminService);
    const note = { actor: 'ops', reason: 'trial' };
    await admin.grant(user, { scope: 'openai', metric: 'calls', amount: 10, ...note });
    for (let i = 0; i < 60; i++) expect((await post(user)).status).toBe(200);
    expect(await flagged(user)).toEqual([{ shadow_refused: null, n: 60 }]);
    expect((await post(user)).status).toBe(200);
    expect(await flagged(user)).toEqual([
      { shadow_refused: null, n: 60 },
      { shadow_refused: 'openai:calls:month:shadow', n: 1 },
    ]);
    const e = await admin
      .setLimit('plan=shadowonly;o', { scope: 'openai', metric: 'calls', max: 9, ...note })
      .catch((err: { getResponse(): { message: string } }) => err.getResponse().message);
    expect(e).toBe(
      "calls for openai per month is a shadow limit of the user's plan: it refuses nothing, so there is nothing to override (change the plan)",
    );
  });
});

describe('shadow limit options', () => {
  it('refuses an unknown mode and two shadow limits of one counter; folds a shadow limit into the enforced one', () => {
    const norm = (limits: unknown[]) => () =>
      normalizeOptions({ plans: [{ name: 'p', limits: limits as never }] });
    expect(norm([{ metric: 'calls', scope: '*', max: 1, mode: 'dry-run' }])).toThrow(
      /plans\[0\]\.limits\[0\]\.mode/,
    );
    expect(
      norm([
        { metric: 'calls', scope: '*', max: 1, mode: 'shadow' },
        { metric: 'calls', scope: '*', max: 2, mode: 'shadow' },
      ]),
    ).toThrow('plans[0].limits[1] repeats the shadow calls per month for scope "*"');
    // Beside an enforced limit of the same counter, a shadow limit is checked on the same charge.
    const { catalog } = normalizeOptions({
      plans: [
        {
          name: 'p',
          limits: [
            { metric: 'calls', scope: '*', max: 5 },
            { metric: 'calls', scope: '*', max: 3, mode: 'shadow' },
          ],
        },
      ],
    });
    expect(
      catalog.limitsFor('p', 'openai').map((l) => [l.limitId, l.max, l.shadowMax, l.shadowLimitId]),
    ).toEqual([['*:calls:month', 5, 3, '*:calls:month:shadow']]);
  });
});
