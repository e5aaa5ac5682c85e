import { Inject, Injectable } from '@nestjs/common';
import { LimitOverrides } from '../admin/limit-overrides';
import { EnforcementMetrics, type EnforcementStats } from '../enforcement/enforcement-metrics';
import { percentageOf } from '../enforcement/usage-limit-exceeded.exception';
import { periodWindow } from '../plans/billing-period';
import { microsToUsd } from '../pricing/money';
import type { UsageStore } from '../storage/usage-store.interface';
import { NORMALIZED_OPTIONS, USAGE_STORE } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { LimitUsage, UsageReport } from './usage-report.interface';

/**
 * Reads usage for reports and dashboards (not the hot path): a user's current periods against the
 * limits of their plan, and the enforcement failure counts.
 */
@Injectable()
export class UsageService {
  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly metrics: EnforcementMetrics,
    private readonly overrides: LimitOverrides,
  ) {}

  /**
   * The user's current-period usage per limit, with percentages and reset times; a limit an admin changed
   * shows as changed (an override's max, plus what was granted; usage a reset forgave left out).
   */
  async getUsage(userId: string): Promise<UsageReport> {
    const plan = this.options.plans.resolve(await this.options.resolvePlan(userId));
    const now = this.options.clock();
    // Shadow limits are being tried, not enforced: the user's report leaves them out.
    const limits = this.options.catalog.limitsOf(plan.name).filter((l) => !l.shadow);
    const windows = limits.map((l) => periodWindow(l.period, now, plan.anchorDay));
    const counters = await this.store.readCounters(
      userId,
      limits.map((l, i) => ({ scope: l.scope, metric: l.metric, periodKey: windows[i].key })),
    );
    const groups = this.options.providerGroups;
    const overridden = this.overrides.of(userId);
    const rows: LimitUsage[] = limits.map((l, i) => {
      const { used, reserved, granted } = counters[i];
      const max = (overridden ? LimitOverrides.maxOf(overridden, l.limitId, l.max, now) : l.max) + granted;
      const money = (n: number) => (l.metric === 'cost' ? microsToUsd(n) : n);
      return {
        scope: l.scope,
        providers: l.scope === '*' ? ['*'] : [...(groups[l.scope] ?? [l.scope])],
        metric: l.metric,
        period: l.period,
        period_key: windows[i].key,
        used: money(used),
        reserved: money(reserved),
        limit: money(max),
        remaining: money(Math.max(0, max - used - reserved)),
        percentage: percentageOf(used, max),
        reset_at: new Date(windows[i].end).toISOString(),
      };
    });
    return { plan: plan.name, limits: rows, timestamp: new Date(now).toISOString() };
  }

  /** Enforcement failures by `reason:provider`, fail-open passes by provider, tracking failures. */
  enforcementStats(): EnforcementStats {
    return this.metrics.snapshot();
  }
}
