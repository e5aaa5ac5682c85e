import { HttpException, Inject, Injectable, Logger } from '@nestjs/common';
import { UsageAlerts } from '../alerts/usage-alerts.service';
import { EnforcementMetrics } from '../enforcement/enforcement-metrics';
import type { MeteringContext } from '../enforcement/metering-context';
import { ThrottledLogger } from '../enforcement/throttled-logger';
import { RollingStats } from '../health/rolling-stats';
import { UsageMetrics } from '../metrics/usage-metrics';
import type { UsageEventRecord, UsageStore } from '../storage/usage-store.interface';
import { NORMALIZED_OPTIONS, USAGE_STORE } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { MeasuredUsage } from './usage-extractor';

/** The usage of a call that failed before it produced anything. */
export const ZERO_USAGE: MeasuredUsage = {
  inputTokens: 0,
  outputTokens: 0,
  searches: 0,
  images: 0,
  pages: 0,
  estimated: false,
};

/** The HTTP status a failed call answered: Nest's exceptions, and the SDKs' errors (`status`). */
export function statusOf(error: unknown): number {
  if (error instanceof HttpException) return error.getStatus();
  const status = (error as { status?: unknown } | null)?.status;
  return typeof status === 'number' && status >= 100 && status <= 599 ? status : 500;
}

/** What a settled call did, as its ledger row records it. */
export interface CallRecord {
  outcome: UsageEventRecord['outcome'];
  statusCode: number;
  /** Read inside the settlement: a usage that cannot be read is charged the reservation's estimate. */
  usage: () => MeasuredUsage;
  responseBytes: number;
  userAgent: string | null;
  ip: string | null;
}

/**
 * Settlement, the same for every way a call is metered: prices the usage, then charges the reservation and
 * appends the ledger row (resolving once it is durable), feeds the rolling stats and publishes alerts.
 * Once per reservation; a tracking failure is counted and logged, never thrown.
 */
@Injectable()
export class UsageSettler {
  private readonly throttledLog = new ThrottledLogger(new Logger('MeteringInterceptor'));

  /** @internal Nest injects these. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly stats: RollingStats,
    private readonly alerts: UsageAlerts,
    private readonly metrics: EnforcementMetrics,
    private readonly usageMetrics: UsageMetrics,
  ) {}

  /**
   * The call's usage; when it cannot be read (a `usage` reader that throws, figures that cannot be right),
   * the reservation's estimate, flagged — a call is never left uncharged because its result was odd.
   */
  private usageOf(metering: MeteringContext, call: CallRecord): MeasuredUsage {
    try {
      return call.usage();
    } catch (e) {
      this.metrics.recordTrackingFailure();
      this.throttledLog.error(
        'usage',
        `the usage of a ${metering.provider} call could not be read (${(e as Error)?.message ?? 'unknown error'}); it was charged its reservation's estimate`,
      );
      return { ...metering.estimate, estimated: true };
    }
  }

  async settle(metering: MeteringContext, call: CallRecord): Promise<void> {
    if (metering.settled) return;
    metering.settled = true;
    try {
      const { provider, reservation } = metering;
      const usage = this.usageOf(metering, call);
      const model = usage.model ?? this.options.priceBook.defaultModel(provider) ?? null;
      const priced = this.options.priceBook.price(provider, model ?? undefined, usage);
      const now = this.options.clock();
      const event: UsageEventRecord = {
        requestId: reservation.requestId,
        userId: reservation.userId,
        provider,
        model,
        endpoint: metering.endpoint.slice(0, 512),
        method: metering.method,
        statusCode: call.statusCode,
        inputTokens: usage.inputTokens,
        outputTokens: usage.outputTokens,
        cachedInputTokens: usage.cachedInputTokens ?? 0,
        cacheWriteTokens: usage.cacheWriteTokens ?? 0,
        reasoningTokens: usage.reasoningTokens ?? 0,
        costMicros: priced.costMicros,
        priceVersion: priced.priceVersion ?? null,
        responseTimeMs: Math.max(0, now - metering.startedAt),
        requestBytes: metering.requestBytes,
        responseBytes: call.responseBytes,
        userAgent: call.userAgent?.slice(0, 512) ?? null,
        ip: call.ip?.slice(0, 64) ?? null,
        searches: usage.searches,
        images: usage.images,
        pages: usage.pages,
        estimated: usage.estimated,
        outcome: call.outcome,
        shadowRefused: metering.shadowRefused ?? null,
        periodKey: metering.ledgerPeriodKey,
        occurredAt: now,
      };
      const committed = this.store.settle(reservation, {
        actual: { calls: 1, tokens: usage.inputTokens + usage.outputTokens, costMicros: priced.costMicros },
        event,
      });
      // The call is counted when it settles, not when its row commits: a caller that does not wait for the
      // commit (the interceptor, UsageMeter.run with durable intent) already sees it in the stats and metrics.
      this.stats.record(call.statusCode);
      this.usageMetrics.settled(event, usage, metering.estimate, metering.estimate.model ?? metering.model);
      const result = await committed;
      if (result.alerts.length) this.alerts.publish(result.alerts);
    } catch (e) {
      this.metrics.recordTrackingFailure();
      this.throttledLog.error(
        'settle',
        `usage could not be recorded: ${(e as Error)?.message ?? 'unknown error'}`,
      );
    }
  }
}
