import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import request from 'supertest';
import { UsageService } from '@app/usage-monitoring';
import { USAGE_STORE } from '@app/usage-monitoring/usage-monitoring.internal-constants';
import type { PerUserSqliteStore } from '@app/usage-monitoring/storage/sqlite/per-user-sqlite.store';
import { startDemo, type DemoApp } from './utils/demo-app';
import { breakDataDir } from './utils/faults';
import { parsePrometheus, series, type PromSample } from './utils/prometheus';
import { TcpProxy } from './utils/tcp-proxy';
import { createSchema, describeSqlite, describeStore, dropSchema, PG, sql, STORE } from './utils/test-store';
import { createTestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';

const KEYS = {
  'key-alice': { user: 'alice', plan: 'free' },
  'key-newcomer': { user: 'newcomer', plan: 'free' },
};
const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 };

interface LedgerRow {
  provider: string;
  model: string | null;
  outcome: string;
  estimated: number;
  input_tokens: number;
  output_tokens: number;
  cost_micros: number;
}

/**
 * The demo's `GET /metrics` (OpenTelemetry SDK, Prometheus exporter) after a scripted sequence: every
 * value is checked against the requests sent and the ledger the store wrote.
 */
describeStore(
  `metrics: the demo's /metrics after admitted, refused, 503, streamed and failed calls (${STORE})`,
  () => {
    let demo: DemoApp;
    let schema: string | undefined;
    let proxy: TcpProxy | undefined;

    beforeAll(async () => {
      if (STORE === 'postgres') {
        schema = await createSchema();
        proxy = new TcpProxy(PG.port);
        const port = await proxy.start();
        const url = `postgres://${PG.user}@${PG.host}:${port}/${PG.database}?options=${encodeURIComponent(`-c search_path=${schema}`)}`;
        demo = await startDemo(KEYS, { databaseUrl: url });
      } else {
        demo = await startDemo(KEYS);
      }
    });
    afterAll(async () => {
      await demo?.close();
      await proxy?.stop();
      if (schema) await dropSchema(schema);
    });

    /** A store outage for `newcomer`'s first request: the data directory taken away, or the database cut. */
    async function outage<T>(fn: () => Promise<T>): Promise<T> {
      if (proxy) {
        await proxy.cut();
        try {
          return await fn();
        } finally {
          await proxy.restore();
        }
      }
      const restore = breakDataDir(demo.dataDir);
      try {
        return await fn();
      } finally {
        restore();
      }
    }

    async function ledger(): Promise<LedgerRow[]> {
      const q =
        'SELECT provider, model, outcome, estimated, input_tokens, output_tokens, cost_micros FROM usage_events';
      if (schema) {
        return (await sql<LedgerRow>(schema, `${q} WHERE user_id = $1`, ['alice'])).map((r) => ({
          ...r,
          estimated: Number(r.estimated),
        }));
      }
      await demo.app.get<PerUserSqliteStore>(USAGE_STORE).flush();
      return queryUserDb<LedgerRow>(demo.dataDir, 'alice', q);
    }

    it('counts decisions, calls, tokens (GenAI conventions), cost and commits exactly', async () => {
      const post = (path: string, body: object, headers: Record<string, string> = {}) =>
        request(demo.url)
          .post(path)
          .set({ authorization: 'Bearer key-alice', ...headers })
          .send(body);
      expect((await post('/openai/v1/chat/completions', chat)).status).toBe(200);
      const streamed = await post('/openai/v1/chat/completions', {
        ...chat,
        stream: true,
        stream_options: { include_usage: true },
      });
      expect(streamed.status).toBe(200);
      expect(streamed.text).toContain('data: [DONE]');
      const failed = await post('/openai/v1/chat/completions', chat, { 'x-simulate-upstream-status': '500' });
      expect(failed.status).toBe(500);
      expect(
        (
          await post('/anthropic/v1/messages', {
            model: 'claude-3.5-sonnet',
            max_tokens: 64,
            messages: [{ role: 'user', content: 'Hi' }],
          })
        ).status,
      ).toBe(200);
      expect(
        (
          await post('/gemini/v1beta/models/gemini-2.5-flash:generateContent', {
            contents: [{ role: 'user', parts: [{ text: 'Hello Gemini' }] }],
          })
        ).status,
      ).toBe(200);
      // The free plan has 10 tavily searches a month: the eleventh is refused.
      const searches: number[] = [];
      for (let i = 0; i < 11; i++) searches.push((await post('/tavily/search', { query: `q${i}` })).status);
      expect(searches).toEqual([...Array(10).fill(200), 429]);
      const unavailable = await outage(() =>
        request(demo.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', 'Bearer key-newcomer')
          .send(chat),
      );
      expect(unavailable.status).toBe(503);

      const rows = await ledger();
      expect(rows).toHaveLength(15);
      const scrape = await request(demo.url).get('/metrics');
      expect(scrape.status).toBe(200);
      expect(scrape.headers['content-type']).toMatch(/^text\/plain/);
      const samples: PromSample[] = parsePrometheus(scrape.text);
      // Every metric of the library carries its scope, and no user id (metrics.userIds is off).
      for (const s of samples.filter((x) => x.labels.otel_scope_name === 'nestjs-usage-monitoring'))
        expect(Object.keys(s.labels)).not.toContain('enduser_id');
      expect(scrape.text).not.toContain('alice');

      // The 503's reason, as the enforcement stats counted it (a cut database may refuse or time out).
      const failures = Object.keys(demo.app.get(UsageService).enforcementStats().failures);
      expect(failures).toEqual([
        STORE === 'postgres'
          ? expect.stringMatching(/^(operational_error|database_session_unavailable):openai$/)
          : 'database_init_failed:openai',
      ]);
      const unavailableReason = failures[0].split(':')[0];
      expect(
        series(samples, 'usage_monitoring_decisions_total', [
          'usage_monitoring_decision',
          'usage_monitoring_provider',
          'usage_monitoring_code',
        ]),
      ).toEqual({
        'usage_monitoring_decision=admitted,usage_monitoring_provider=openai,usage_monitoring_code=ok': 3,
        'usage_monitoring_decision=admitted,usage_monitoring_provider=anthropic,usage_monitoring_code=ok': 1,
        'usage_monitoring_decision=admitted,usage_monitoring_provider=gemini,usage_monitoring_code=ok': 1,
        'usage_monitoring_decision=admitted,usage_monitoring_provider=tavily,usage_monitoring_code=ok': 10,
        'usage_monitoring_decision=refused,usage_monitoring_provider=tavily,usage_monitoring_code=USAGE_LIMIT_CALLS': 1,
        [`usage_monitoring_decision=unavailable,usage_monitoring_provider=openai,usage_monitoring_code=${unavailableReason}`]: 1,
      });
      expect(
        series(samples, 'usage_monitoring_calls_total', [
          'usage_monitoring_provider',
          'usage_monitoring_outcome',
        ]),
      ).toEqual({
        'usage_monitoring_provider=openai,usage_monitoring_outcome=ok': 2,
        'usage_monitoring_provider=openai,usage_monitoring_outcome=error': 1,
        'usage_monitoring_provider=anthropic,usage_monitoring_outcome=ok': 1,
        'usage_monitoring_provider=gemini,usage_monitoring_outcome=ok': 1,
        'usage_monitoring_provider=tavily,usage_monitoring_outcome=ok': 10,
      });

      // gen_ai.client.token.usage: the ledger's provider-reported tokens, by provider, model and type.
      const expectedTokens: Record<string, number> = {};
      const expectedCounts: Record<string, number> = {};
      const genAi = { openai: 'openai', anthropic: 'anthropic', gemini: 'gcp.gemini' } as Record<
        string,
        string
      >;
      for (const r of rows) {
        if (!genAi[r.provider] || r.estimated || r.input_tokens + r.output_tokens === 0) continue;
        const op = r.provider === 'gemini' ? 'generate_content' : 'chat';
        for (const [type, n] of [
          ['input', r.input_tokens],
          ['output', r.output_tokens],
        ] as const) {
          const key = `gen_ai_operation_name=${op},gen_ai_provider_name=${genAi[r.provider]},gen_ai_token_type=${type},gen_ai_request_model=${r.model},gen_ai_response_model=${r.model}`;
          expectedTokens[key] = (expectedTokens[key] ?? 0) + n;
          expectedCounts[key] = (expectedCounts[key] ?? 0) + 1;
        }
      }
      const tokenLabels = [
        'gen_ai_operation_name',
        'gen_ai_provider_name',
        'gen_ai_token_type',
        'gen_ai_request_model',
        'gen_ai_response_model',
      ];
      expect(Object.keys(expectedTokens)).toHaveLength(6); // openai, anthropic, gemini × input, output
      expect(series(samples, 'gen_ai_client_token_usage_sum', tokenLabels)).toEqual(expectedTokens);
      expect(series(samples, 'gen_ai_client_token_usage_count', tokenLabels)).toEqual(expectedCounts);
      // The conventions' bucket boundaries.
      expect(
        samples
          .filter(
            (s) => s.name === 'gen_ai_client_token_usage_bucket' && s.labels.gen_ai_token_type === 'input',
          )
          .filter((s) => s.labels.gen_ai_provider_name === 'openai')
          .map((s) => s.labels.le),
      ).toEqual(
        [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
          .map(String)
          .concat('+Inf'),
      );

      // Cost in micro-dollars by provider and model: the ledger's sums.
      const expectedCost: Record<string, number> = {};
      for (const r of rows) {
        if (r.cost_micros <= 0) continue;
        const key = `usage_monitoring_provider=${r.provider},usage_monitoring_model=${r.model ?? ''}`;
        expectedCost[key] = (expectedCost[key] ?? 0) + Number(r.cost_micros);
      }
      expect(Object.keys(expectedCost).length).toBeGreaterThanOrEqual(4);
      expect(
        series(samples, 'usage_monitoring_cost_total', [
          'usage_monitoring_provider',
          'usage_monitoring_model',
        ]),
      ).toEqual(expectedCost);

      // Estimate against actual, for the calls that completed with figures.
      const actual = series(samples, 'usage_monitoring_tokens_actual_total', ['usage_monitoring_provider']);
      const okOpenAi = rows.filter((r) => r.provider === 'openai' && r.outcome === 'ok');
      expect(actual['usage_monitoring_provider=openai']).toBe(
        okOpenAi.reduce((n, r) => n + r.input_tokens + r.output_tokens, 0),
      );
      const estimated = series(samples, 'usage_monitoring_tokens_estimated_total', [
        'usage_monitoring_provider',
      ]);
      // Each reservation counts max_tokens (50) of output; the simulator answered fewer.
      expect(estimated['usage_monitoring_provider=openai']).toBeGreaterThan(
        actual['usage_monitoring_provider=openai'],
      );

      // Every settlement went through a commit; nothing is left pending once the rows are in.
      expect(series(samples, 'usage_monitoring_commit_size_sum', [])).toEqual({ '': 15 });
      expect(series(samples, 'usage_monitoring_commit_duration_count', [])['']).toBeGreaterThanOrEqual(1);
      expect(series(samples, 'usage_monitoring_writes_pending', [])).toEqual({ '': 0 });
      expect(series(samples, 'usage_monitoring_databases_open', [])).toEqual(
        STORE === 'postgres' ? {} : { '': 1 },
      );
    });
  },
);

describeSqlite('metrics: a request let through by the emergency fail-open switch', () => {
  it('is counted as a fail_open decision with the reason, and nothing else', async () => {
    const reader = new CollectingReader();
    const provider = new MeterProvider({ readers: [reader] });
    const t = await createTestApp({
      usage: { emergencyFailOpen: true, metrics: { meterProvider: provider } },
    });
    const restore = breakDataDir(t.dataDir);
    try {
      const res = await request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('u'))
        .send({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
      expect(res.status).toBe(200);
      const { resourceMetrics } = await reader.collect();
      const decisions = resourceMetrics.scopeMetrics
        .flatMap((s) => s.metrics)
        .filter((m) => m.descriptor.name === 'usage_monitoring.decisions')
        .flatMap((m) => m.dataPoints.map((p) => [p.attributes, p.value]));
      expect(decisions).toEqual([
        [
          {
            'usage_monitoring.decision': 'fail_open',
            'usage_monitoring.provider': 'openai',
            'usage_monitoring.code': 'database_init_failed',
          },
          1,
        ],
      ]);
    } finally {
      restore();
      await t.close();
      await provider.shutdown();
    }
  });
});

/** Collects on demand, as a scrape does. */
class CollectingReader extends MetricReader {
  protected onShutdown = async () => undefined;
  protected onForceFlush = async () => undefined;
}
