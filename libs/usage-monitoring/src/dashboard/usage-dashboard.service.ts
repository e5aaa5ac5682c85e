import { Inject, Injectable } from '@nestjs/common';
import { UsageAdminService } from '../admin/usage-admin.service';
import type { TopSpender, UserOverShare } from '../admin/usage-adjustment.interface';
import { EnforcementMetrics, type EnforcementStats } from '../enforcement/enforcement-metrics';
import { RollingStats, type UsageStatsSnapshot } from '../health/rolling-stats';
import { periodWindow, type PeriodWindow } from '../plans/billing-period';
import type { StoreHealth, UsageStore, UserActivity } from '../storage/usage-store.interface';
import { UsageService } from '../usage/usage.service';
import type { UsageReport } from '../usage/usage-report.interface';
import { NORMALIZED_OPTIONS, USAGE_STORE } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import { DecisionWindow, type DecisionCount } from './decision-window';

/** What the user's view shows. */
export interface UserViewData {
  userId: string;
  report: UsageReport;
  /** The user's current billing month. */
  month: PeriodWindow;
  activity: UserActivity;
  now: number;
}

/** What the operator's view shows. */
export interface OperatorViewData {
  health: StoreHealth;
  stats: UsageStatsSnapshot;
  enforcement: EnforcementStats;
  /** Writes queued and not yet committed (per-user store), or null when the store does not say. */
  pendingWrites: number | null;
  lastHour: { minute: number; counts: DecisionCount[] }[];
  top: TopSpender[];
  over: UserOverShare[];
  now: number;
}

/** Gathers the dashboard's figures from the library's own services: nothing here opens every user's file. */
@Injectable()
export class UsageDashboardService {
  /** @internal Nest injects these. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly usage: UsageService,
    private readonly admin: UsageAdminService,
    private readonly stats: RollingStats,
    private readonly enforcement: EnforcementMetrics,
    private readonly decisions: DecisionWindow,
  ) {}

  /** One user's limits, cost per day of their billing month, latest requests and alerts. */
  async userView(userId: string): Promise<UserViewData> {
    const now = this.options.clock();
    const plan = this.options.plans.resolve(await this.options.resolvePlan(userId));
    const month = periodWindow('month', now, plan.anchorDay);
    const [report, activity] = await Promise.all([
      this.usage.getUsage(userId),
      this.store.userActivity(userId, { periodKey: month.key, recent: 20 }),
    ]);
    return { userId, report, month, activity, now };
  }

  /** Enforcement health, the last hour's decisions, top spenders and users over 80 % of a limit. */
  async operatorView(): Promise<OperatorViewData> {
    const now = this.options.clock();
    let health: StoreHealth;
    try {
      health = await this.store.health();
    } catch {
      health = { up: false, reason: 'health check failed' };
    }
    const pending = (this.store as { pendingWrites?: () => number }).pendingWrites;
    const [top, over] = await Promise.all([
      this.admin.top({ by: 'cost', limit: 10 }),
      this.admin.list({ over: 0.8, limit: 50 }),
    ]);
    return {
      health,
      stats: this.stats.snapshot(),
      enforcement: this.enforcement.snapshot(),
      pendingWrites: typeof pending === 'function' ? pending.call(this.store) : null,
      lastHour: this.decisions.lastHour(),
      top,
      over,
      now,
    };
  }
}
