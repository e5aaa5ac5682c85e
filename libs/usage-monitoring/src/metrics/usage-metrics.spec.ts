import { MeterProvider, MetricReader, type DataPoint, type Histogram } from '@opentelemetry/sdk-metrics';
import { metrics as otel } from '@opentelemetry/api';
import type { MeasuredUsage } from '../metering/usage-extractor';
import type { UsageEventRecord } from '../storage/usage-store.interface';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import { DecisionWindow } from '../dashboard/decision-window';
import { UsageMetrics } from './usage-metrics';

/** Collects on demand (what a Prometheus scrape does). */
class TestReader extends MetricReader {
  protected onShutdown = async () => undefined;
  protected onForceFlush = async () => undefined;
}

const KNOWN = new Set(['gpt-4o-mini']);
function metricsWith(metrics: NormalizedUsageOptions['metrics']): UsageMetrics {
  const options = {
    metrics,
    priceBook: { isKnown: (_p: string, model: string) => KNOWN.has(model) },
    clock: Date.now,
  } as unknown as NormalizedUsageOptions;
  return new UsageMetrics(options, new DecisionWindow(options));
}

function event(model: string | null, userId = 'alice'): UsageEventRecord {
  return {
    requestId: 'r',
    userId,
    provider: 'openai',
    model,
    endpoint: '/x',
    method: 'POST',
    statusCode: 200,
    inputTokens: 10,
    outputTokens: 5,
    cachedInputTokens: 0,
    cacheWriteTokens: 0,
    reasoningTokens: 0,
    costMicros: 7,
    priceVersion: null,
    responseTimeMs: 1,
    requestBytes: 0,
    responseBytes: 0,
    userAgent: null,
    ip: null,
    searches: 0,
    images: 0,
    pages: 0,
    estimated: false,
    outcome: 'ok',
    shadowRefused: null,
    periodKey: 'month:2026-12-01',
    occurredAt: 0,
  };
}
const usage: MeasuredUsage = {
  inputTokens: 10,
  outputTokens: 5,
  searches: 0,
  images: 0,
  pages: 0,
  estimated: false,
};
const estimate: MeasuredUsage = { ...usage, outputTokens: 50 };

async function collect(reader: TestReader) {
  const { resourceMetrics } = await reader.collect();
  const out = new Map<string, DataPoint<number | Histogram>[]>();
  for (const scope of resourceMetrics.scopeMetrics)
    for (const m of scope.metrics)
      out.set(m.descriptor.name, m.dataPoints as DataPoint<number | Histogram>[]);
  return out;
}

describe('UsageMetrics', () => {
  let reader: TestReader;
  let provider: MeterProvider;
  beforeEach(() => {
    reader = new TestReader();
    provider = new MeterProvider({ readers: [reader] });
  });
  afterEach(() => provider.shutdown());

  it('records no user id by default, and enduser.id on cost and tokens with userIds: true', async () => {
    metricsWith({ meterProvider: provider, userIds: false }).settled(
      event('gpt-4o-mini'),
      usage,
      estimate,
      'gpt-4o-mini',
    );
    let points = await collect(reader);
    expect(points.get('usage_monitoring.cost')!.map((p) => p.attributes)).toEqual([
      { 'usage_monitoring.provider': 'openai', 'usage_monitoring.model': 'gpt-4o-mini' },
    ]);
    await provider.shutdown();

    reader = new TestReader();
    provider = new MeterProvider({ readers: [reader] });
    const m = metricsWith({ meterProvider: provider, userIds: true });
    m.settled(event('gpt-4o-mini', 'alice'), usage, estimate, 'gpt-4o-mini');
    m.settled(event('gpt-4o-mini', 'bob'), usage, estimate, 'gpt-4o-mini');
    points = await collect(reader);
    expect(points.get('usage_monitoring.cost')!.map((p) => [p.attributes['enduser.id'], p.value])).toEqual([
      ['alice', 7],
      ['bob', 7],
    ]);
    const tokens = points.get('gen_ai.client.token.usage')!;
    expect(
      tokens.map((p) => [
        p.attributes['enduser.id'],
        p.attributes['gen_ai.token.type'],
        (p.value as Histogram).sum,
      ]),
    ).toEqual([
      ['alice', 'input', 10],
      ['alice', 'output', 5],
      ['bob', 'input', 10],
      ['bob', 'output', 5],
    ]);
    // Decisions never carry a user.
    m.decision('admitted', 'openai', 'ok');
    points = await collect(reader);
    expect(points.get('usage_monitoring.decisions')!.map((p) => p.attributes)).toEqual([
      {
        'usage_monitoring.decision': 'admitted',
        'usage_monitoring.provider': 'openai',
        'usage_monitoring.code': 'ok',
      },
    ]);
  });

  it('keeps 64 unpriced model names from requests, then reports the rest as _other', async () => {
    const m = metricsWith({ meterProvider: provider, userIds: false });
    for (let i = 0; i < 200; i++) m.settled(event(`made-up-${i}`), usage, estimate, `made-up-${i}`);
    m.settled(event('gpt-4o-mini'), usage, estimate, 'gpt-4o-mini');
    const cost = (await collect(reader)).get('usage_monitoring.cost')!;
    const byModel = new Map(cost.map((p) => [p.attributes['usage_monitoring.model'], p.value]));
    expect(byModel.size).toBe(64 + 2);
    expect(byModel.get('_other')).toBe((200 - 64) * 7);
    expect(byModel.get('made-up-63')).toBe(7);
    expect(byModel.has('made-up-64')).toBe(false);
    expect(byModel.get('gpt-4o-mini')).toBe(7);
  });

  it('records only provider-reported tokens in gen_ai.client.token.usage, and nothing with metrics: false', async () => {
    const m = metricsWith({ meterProvider: provider, userIds: false });
    m.settled(event('gpt-4o-mini'), { ...usage, estimated: true }, estimate, 'gpt-4o-mini');
    const points = await collect(reader);
    expect(points.get('gen_ai.client.token.usage') ?? []).toEqual([]);
    expect(points.get('usage_monitoring.tokens.actual') ?? []).toEqual([]);
    expect(points.get('usage_monitoring.cost')!.map((p) => p.value)).toEqual([7]);

    // The global meter provider is asked once by default, never with metrics: false; with no SDK registered
    // (the API's no-op meter) nothing is recorded.
    expect(
      (metricsWith({ meterProvider: undefined, userIds: false }) as unknown as { meter?: unknown }).meter,
    ).toBeUndefined();
    const global = jest.spyOn(otel, 'getMeterProvider');
    try {
      metricsWith({ meterProvider: undefined, userIds: false });
      expect(global).toHaveBeenCalledTimes(1);
      const off = metricsWith(false);
      off.settled(event('gpt-4o-mini'), usage, estimate, 'gpt-4o-mini');
      off.decision('refused', 'openai', 'USAGE_LIMIT_CALLS');
      off.commit(3, 0.001);
      off.observeStore({ pendingWrites: () => 1, openDataSources: 1 });
      expect(global).toHaveBeenCalledTimes(1);
    } finally {
      global.mockRestore();
    }
  });
});
