import { Inject, Injectable } from '@nestjs/common';
import {
  createNoopMeter,
  metrics as otel,
  ValueType,
  type Attributes,
  type Counter,
  type Histogram,
  type Meter,
} from '@opentelemetry/api';
import type { MeasuredUsage } from '../metering/usage-extractor';
import type { UsageEventRecord } from '../storage/usage-store.interface';
import { DecisionWindow } from '../dashboard/decision-window';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';

/** The meter's name (the instrumentation scope of every instrument below). */
export const METER_NAME = 'nestjs-usage-monitoring';

/** Bucket boundaries the GenAI conventions give `gen_ai.client.token.usage`. */
export const TOKEN_BUCKETS = [
  1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
];
const COMMIT_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];
const COMMIT_SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** `gen_ai.provider.name` of the conventions' well-known providers; others keep the library's name. */
const GEN_AI_PROVIDERS: Readonly<Record<string, string>> = {
  openai: 'openai',
  anthropic: 'anthropic',
  gemini: 'gcp.gemini',
  mistral: 'mistral_ai',
  deepseek: 'deepseek',
  groq: 'groq',
  cohere: 'cohere',
  perplexity: 'perplexity',
  xai: 'x_ai',
};

/** Distinct unpriced model names kept as attribute values; beyond, `_other` (a model name comes from requests). */
const MAX_UNPRICED_MODELS = 64;

/** How an admission ended. */
export type UsageDecision = 'admitted' | 'refused' | 'unavailable' | 'fail_open' | 'shadow_refused';

/** Where the instruments' values come from that are read, not pushed (the store's gauges). */
export interface ObservedStore {
  pendingWrites?(): number;
  openDataSources?: number;
}

/**
 * The library's metrics, through `@opentelemetry/api`: instruments created once, attribute sets built
 * once per provider, model and outcome, so that recording costs a map lookup and the SDK's own work
 * (nothing when no SDK is registered, or with `metrics: false`).
 */
@Injectable()
export class UsageMetrics {
  private readonly meter: Meter | undefined;
  private readonly userIds: boolean;
  private readonly decisions: Counter | undefined;
  private readonly tokenUsage: Histogram | undefined;
  private readonly cost: Counter | undefined;
  private readonly calls: Counter | undefined;
  private readonly estimatedTokens: Counter | undefined;
  private readonly actualTokens: Counter | undefined;
  private readonly commitSize: Histogram | undefined;
  private readonly commitSeconds: Histogram | undefined;
  private readonly releasedByTtl: Counter | undefined;
  private readonly webhookDeliveries: Counter | undefined;
  private readonly attributes = new Map<string, Attributes>();
  private readonly unpriced = new Set<string>();

  /** @internal Nest injects these. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    private readonly window: DecisionWindow,
  ) {
    const m = options.metrics;
    this.userIds = m !== false && m.userIds;
    if (m === false) return;
    const meter = (m.meterProvider ?? otel.getMeterProvider()).getMeter(METER_NAME);
    // No SDK registered: the API's no-op meter, and the API has no proxy that a later registration would
    // reach. Nothing is recorded then, so the hot path skips even building attributes.
    if (meter.constructor === createNoopMeter().constructor) return;
    this.meter = meter;
    this.tokenUsage = meter.createHistogram('gen_ai.client.token.usage', {
      description: 'Number of input and output tokens used (billable, as the provider reported them).',
      unit: '{token}',
      valueType: ValueType.INT,
      advice: { explicitBucketBoundaries: TOKEN_BUCKETS },
    });
    const counter = (name: string, unit: string, description: string) =>
      meter.createCounter(name, { description, unit, valueType: ValueType.INT });
    this.decisions = counter(
      'usage_monitoring.decisions',
      '{request}',
      'Admission decisions of metered calls, by outcome, provider and code.',
    );
    this.calls = counter(
      'usage_monitoring.calls',
      '{call}',
      'Metered calls settled, by provider and ledger outcome (ok, partial, error, ...).',
    );
    this.cost = counter(
      'usage_monitoring.cost',
      '{microdollar}',
      'Cost charged, in micro-dollars (1e-6 USD), by provider and model.',
    );
    this.estimatedTokens = counter(
      'usage_monitoring.tokens.estimated',
      '{token}',
      'Tokens reserved at admission (input + output estimate) of calls that completed with usage figures, by provider.',
    );
    this.actualTokens = counter(
      'usage_monitoring.tokens.actual',
      '{token}',
      'Tokens charged (input + output) of the same calls, by provider.',
    );
    this.commitSize = meter.createHistogram('usage_monitoring.commit.size', {
      description: 'Writes per usage commit (journal turn, or shared-store batch).',
      unit: '{write}',
      valueType: ValueType.INT,
      advice: { explicitBucketBoundaries: COMMIT_SIZE_BUCKETS },
    });
    this.commitSeconds = meter.createHistogram('usage_monitoring.commit.duration', {
      description: 'Duration of usage commits.',
      unit: 's',
      advice: { explicitBucketBoundaries: COMMIT_SECONDS_BUCKETS },
    });
    this.releasedByTtl = counter(
      'usage_monitoring.reservations.released_by_ttl',
      '{reservation}',
      'Reservations released because no settlement came within storage.reservationTtlMs.',
    );
    this.webhookDeliveries = counter(
      'usage_monitoring.webhook.deliveries',
      '{attempt}',
      'Alert webhook attempts, by result (delivered, failed and to be retried, parked).',
    );
  }

  /** One alert webhook attempt: acknowledged, failed (to be retried), or failed for the last time (parked). */
  webhookDelivery(result: 'delivered' | 'failed' | 'parked'): void {
    this.webhookDeliveries?.add(
      1,
      this.attrs(`w\u0001${result}`, () => ({ 'usage_monitoring.result': result })),
    );
  }

  /** Gauges read from the store at each collection: writes not yet committed, user databases open. */
  observeStore(store: ObservedStore): void {
    const meter = this.meter;
    if (!meter) return;
    if (typeof store.pendingWrites === 'function') {
      meter
        .createObservableGauge('usage_monitoring.writes.pending', {
          description:
            'Usage writes not yet in their final database (per-user store: including rows in the journal waiting for the user file).',
          unit: '{write}',
          valueType: ValueType.INT,
        })
        .addCallback((r) => r.observe(store.pendingWrites!()));
    }
    if (typeof store.openDataSources === 'number') {
      meter
        .createObservableGauge('usage_monitoring.databases.open', {
          description: 'User databases open (per-user SQLite store).',
          unit: '{database}',
          valueType: ValueType.INT,
        })
        .addCallback((r) => r.observe(store.openDataSources!));
    }
  }

  decision(decision: UsageDecision, provider: string, code: string): void {
    if (this.window.on) this.window.record(decision, provider, code);
    this.decisions?.add(
      1,
      this.attrs(`d\u0001${decision}\u0001${provider}\u0001${code}`, () => ({
        'usage_monitoring.decision': decision,
        'usage_monitoring.provider': provider,
        'usage_monitoring.code': code,
      })),
    );
  }

  /** A settlement that committed: its tokens, cost, outcome, and how far its estimate was from it. */
  settled(
    event: UsageEventRecord,
    usage: MeasuredUsage,
    estimate: MeasuredUsage,
    requestModel: string | undefined,
  ): void {
    if (!this.meter) return;
    const { provider } = event;
    const model = this.modelValue(provider, event.model);
    this.calls!.add(
      1,
      this.attrs(`c\u0001${provider}\u0001${event.outcome}`, () => ({
        'usage_monitoring.provider': provider,
        'usage_monitoring.outcome': event.outcome,
      })),
    );
    const user = this.userIds ? event.userId : undefined;
    if (event.costMicros > 0) {
      // A provider without models (search, crawling) has no model attribute.
      const attrs = this.attrs(`$\u0001${provider}\u0001${event.model ? model : ''}`, () =>
        event.model
          ? { 'usage_monitoring.provider': provider, 'usage_monitoring.model': model }
          : { 'usage_monitoring.provider': provider },
      );
      this.cost!.add(event.costMicros, user === undefined ? attrs : { ...attrs, 'enduser.id': user });
    }
    // Figures the provider reported (or counted from a stream); an estimate charged as it is has no actual.
    if (usage.estimated) return;
    const actual = usage.inputTokens + usage.outputTokens;
    if (event.outcome === 'ok') {
      const estimated = estimate.inputTokens + estimate.outputTokens;
      if (estimated > 0 || actual > 0) {
        const attrs = this.attrs(`t\u0001${provider}`, () => ({ 'usage_monitoring.provider': provider }));
        this.estimatedTokens!.add(estimated, attrs);
        this.actualTokens!.add(actual, attrs);
      }
    }
    if (actual === 0) return;
    const genAiProvider = GEN_AI_PROVIDERS[provider] ?? provider;
    const request = this.modelValue(provider, requestModel ?? event.model);
    for (const [type, value] of [
      ['input', usage.inputTokens],
      ['output', usage.outputTokens],
    ] as const) {
      const attrs = this.attrs(`g\u0001${provider}\u0001${request}\u0001${model}\u0001${type}`, () => ({
        'gen_ai.operation.name': provider === 'gemini' ? 'generate_content' : 'chat',
        'gen_ai.provider.name': genAiProvider,
        'gen_ai.token.type': type,
        'gen_ai.request.model': request,
        'gen_ai.response.model': model,
      }));
      this.tokenUsage!.record(value, user === undefined ? attrs : { ...attrs, 'enduser.id': user });
    }
  }

  /** One commit of `writes` usage writes that took `seconds`. */
  commit(writes: number, seconds: number): void {
    this.commitSize?.record(writes);
    this.commitSeconds?.record(seconds);
  }

  reservationsReleased(count: number): void {
    if (count > 0) this.releasedByTtl?.add(count);
  }

  /** A model name as an attribute value: priced models as they are, a bounded number of others, then `_other`. */
  private modelValue(provider: string, model: string | null | undefined): string {
    if (!model) return '_unknown';
    if (this.options.priceBook.isKnown(provider, model) || this.unpriced.has(model)) return model;
    if (this.unpriced.size >= MAX_UNPRICED_MODELS) return '_other';
    this.unpriced.add(model);
    return model;
  }

  private attrs(key: string, build: () => Attributes): Attributes {
    let a = this.attributes.get(key);
    if (!a) {
      a = Object.freeze(build());
      this.attributes.set(key, a);
    }
    return a;
  }
}
