import {
  Inject,
  Logger,
  Module,
  type ConfigurableModuleAsyncOptions,
  type DynamicModule,
  type OnApplicationShutdown,
  type OnModuleInit,
  type Provider,
  type Type,
} from '@nestjs/common';
import { APP_FILTER, DiscoveryModule, DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { TerminusModule } from '@nestjs/terminus';
import { Metered } from './decorators/metered.decorator';
import { adminControllerFor } from './admin/usage-admin.controller';
import { DECISION_WINDOW_ON, DecisionWindow } from './dashboard/decision-window';
import { dashboardControllersFor } from './dashboard/usage-dashboard.controller';
import { UsageDashboardService } from './dashboard/usage-dashboard.service';
import { LimitOverrides } from './admin/limit-overrides';
import { UsageAdminService } from './admin/usage-admin.service';
import { startupSummary } from './startup-summary';
import { UsageAlerts } from './alerts/usage-alerts.service';
import { AlertWebhooks } from './alerts/alert-webhooks';
import { EnforcementMetrics } from './enforcement/enforcement-metrics';
import { UsageEnforcer } from './enforcement/usage-enforcer';
import { UsageMetrics } from './metrics/usage-metrics';
import { UsageLimitGuard } from './enforcement/usage-limit.guard';
import { RollingStats } from './health/rolling-stats';
import { UsageHealthController } from './health/usage-health.controller';
import { UsageHealthIndicator } from './health/usage-health.indicator';
import { MeteringInterceptor } from './metering/metering.interceptor';
import { UsageSettler } from './metering/usage-settler';
import { UsageMeter } from './metering/usage-meter';
import { UsageExceptionFilter } from './enforcement/usage-exception.filter';
import { PerUserSqliteStore } from './storage/sqlite/per-user-sqlite.store';
import { SharedPostgresStore } from './storage/shared/shared-postgres.store';
import type { UsageStore } from './storage/usage-store.interface';
import { UsageService } from './usage/usage.service';
import { ConfigurableModuleClass, MODULE_OPTIONS_TOKEN } from './usage-monitoring.module-definition';
import { NORMALIZED_OPTIONS, USAGE_STORE } from './usage-monitoring.internal-constants';
import { normalizeOptions, type NormalizedUsageOptions } from './usage-monitoring.normalized-options';
import type { UsageMonitoringModuleExtras, UsageMonitoringModuleOptions } from './usage-monitoring.options';

const providers: Provider[] = [
  {
    provide: NORMALIZED_OPTIONS,
    useFactory: (options: UsageMonitoringModuleOptions) => normalizeOptions(options),
    inject: [MODULE_OPTIONS_TOKEN],
  },
  {
    provide: USAGE_STORE,
    useFactory: (
      { storage, clock, clockSkew, enforcementTimeoutMs, webhooks }: NormalizedUsageOptions,
      metrics: EnforcementMetrics,
      usageMetrics: UsageMetrics,
    ): UsageStore => {
      const released = (n: number) => {
        metrics.recordReleasedByTtl(n);
        usageMetrics.reservationsReleased(n);
      };
      const onCommit = (writes: number, seconds: number) => usageMetrics.commit(writes, seconds);
      const store =
        storage.type === 'shared'
          ? new SharedPostgresStore(
              storage,
              clock,
              clockSkew,
              released,
              onCommit,
              webhooks.map((w) => w.url),
            )
          : new PerUserSqliteStore({
              ...storage,
              clock,
              stallMs: enforcementTimeoutMs,
              onReservationsReleased: released,
              onCommit,
              webhookUrls: webhooks.map((w) => w.url),
            });
      usageMetrics.observeStore(store);
      return store;
    },
    inject: [NORMALIZED_OPTIONS, EnforcementMetrics, UsageMetrics],
  },
  EnforcementMetrics,
  DecisionWindow,
  UsageMetrics,
  RollingStats,
  UsageAlerts,
  UsageService,
  UsageHealthIndicator,
  UsageEnforcer,
  UsageSettler,
  UsageMeter,
  UsageLimitGuard,
  MeteringInterceptor,
  AlertWebhooks,
  LimitOverrides,
  UsageAdminService,
  { provide: APP_FILTER, useClass: UsageExceptionFilter },
];

/**
 * Meters per-user spend on external APIs and enforces plan limits.
 *
 * @example
 * ```ts
 * @Module({ imports: [UsageMonitoringModule.forRoot({ plans, storage: { dataDir: './data' } })] })
 * export class AppModule {}
 * ```
 */
@Module({
  imports: [TerminusModule, DiscoveryModule],
  providers,
  exports: [
    MODULE_OPTIONS_TOKEN,
    NORMALIZED_OPTIONS,
    USAGE_STORE,
    EnforcementMetrics,
    UsageMetrics,
    RollingStats,
    UsageAlerts,
    UsageService,
    UsageHealthIndicator,
    UsageEnforcer,
    UsageSettler,
    UsageMeter,
    UsageLimitGuard,
    MeteringInterceptor,
    LimitOverrides,
    UsageAdminService,
  ],
})
export class UsageMonitoringModule
  extends ConfigurableModuleClass
  implements OnModuleInit, OnApplicationShutdown
{
  private readonly logger = new Logger('UsageMonitoring');

  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
    private readonly webhooks: AlertWebhooks,
    private readonly overrides: LimitOverrides,
  ) {
    super();
  }

  /** Configures the module with options known at import time. */
  static override forRoot(
    options: UsageMonitoringModuleOptions & UsageMonitoringModuleExtras,
  ): DynamicModule {
    return withControllers(super.forRoot(options), options);
  }

  /**
   * Configures the module with options from a factory (`useFactory` + `inject`), a class (`useClass`,
   * implementing `createUsageMonitoringOptions()`) or an existing provider (`useExisting`).
   */
  static override forRootAsync(
    options: ConfigurableModuleAsyncOptions<UsageMonitoringModuleOptions, 'createUsageMonitoringOptions'> &
      UsageMonitoringModuleExtras,
  ): DynamicModule {
    return withControllers(super.forRootAsync(options), options);
  }

  async onModuleInit(): Promise<void> {
    try {
      this.options.catalog.checkScopes(new Set([...this.options.knownProviders, ...this.meteredProviders()]));
    } catch (e) {
      throw new Error(`UsageMonitoringModule: ${(e as Error).message}`);
    }
    await this.store.init?.();
    await this.loadOverrides();
    if (this.store instanceof PerUserSqliteStore) this.webhooks.start(this.store.alertOutbox());
    else if (this.store instanceof SharedPostgresStore)
      this.webhooks.start(this.store.alertOutbox(this.webhooks.claimMs));
    const summary = startupSummary(this.options);
    if (this.options.emergencyFailOpen) this.logger.warn(summary);
    else this.logger.log(summary);
  }

  /** Overrides in force, then (shared store) those other instances change: per user, or all after a gap. */
  private async loadOverrides(): Promise<void> {
    const { store, overrides, options } = this;
    overrides.replace(await store.overrides(options.clock()));
    const latest = new Map<string, number>();
    let generation = 0;
    store.watchOverrides?.((userId) => {
      // Reloads may answer out of order: only the latest one started for a user (or for all) applies.
      const key = userId ?? '\u0000all';
      const mine = ++generation;
      latest.set(key, mine);
      store.overrides(options.clock(), userId).then(
        (rows) => {
          if (latest.get(key) !== mine) return;
          latest.delete(key);
          overrides.replace(rows, userId);
        },
        (e: Error) => this.logger.error(`limit overrides could not be reloaded: ${e.message}`),
      );
    });
  }

  /**
   * The providers `@Metered` names on the app's controllers, resolvers and gateways and their handlers
   * (inherited ones too).
   */
  private meteredProviders(): string[] {
    const found: string[] = [];
    for (const { metatype } of [...this.discovery.getControllers(), ...this.discovery.getProviders()]) {
      if (typeof metatype !== 'function') continue;
      const proto = metatype.prototype as object | undefined;
      if (!proto) continue;
      const handlers = this.scanner
        .getAllMethodNames(proto)
        .map((name) => (proto as Record<string, unknown>)[name]);
      for (const target of [metatype, ...handlers]) {
        if (typeof target !== 'function') continue;
        const provider = this.reflector.get(Metered, target)?.provider;
        if (provider) found.push(provider);
      }
    }
    return found;
  }

  async onApplicationShutdown(): Promise<void> {
    await this.webhooks.stop();
    await this.store.close();
  }
}

/** An extra's `path`, or its default; refused when it is not a non-empty route path. */
function routePath(path: unknown, extra: string, fallback: string): string {
  const p = path ?? fallback;
  if (typeof p !== 'string' || p.replace(/\//g, '') === '')
    throw new Error(
      `UsageMonitoringModule: ${extra}.path must be a non-empty route path, e.g. '${fallback}'`,
    );
  return p;
}

function withControllers(definition: DynamicModule, extras: UsageMonitoringModuleExtras): DynamicModule {
  const controllers: Type[] = extras.healthController === false ? [] : [UsageHealthController];
  const admin = extras.adminController;
  if (admin !== undefined) {
    if (!Array.isArray(admin?.guards) || admin.guards.length === 0 || admin.guards.some((g) => !g))
      throw new Error(
        'UsageMonitoringModule: adminController.guards must list at least one guard of yours that lets only admins through (the admin API changes what users may spend)',
      );
    controllers.push(
      adminControllerFor(routePath(admin.path, 'adminController', 'usage/admin'), admin.guards),
    );
  }
  const dashboard = extras.dashboard;
  if (dashboard === undefined) return { ...definition, controllers };
  const guards = dashboard?.guards ?? [];
  if (!Array.isArray(guards) || guards.some((g) => !g))
    throw new Error('UsageMonitoringModule: dashboard.guards must be a list of guards');
  if (guards.length === 0 && dashboard.public !== true)
    throw new Error(
      "UsageMonitoringModule: dashboard.guards must list your guard that authenticates users (the dashboard shows the signed-in user's usage), or set dashboard.public: true when a global guard already does",
    );
  const path = routePath(dashboard.path, 'dashboard', 'usage/dashboard');
  controllers.push(...dashboardControllersFor(path, guards, admin?.guards));
  return {
    ...definition,
    controllers,
    providers: [
      ...(definition.providers ?? []),
      { provide: DECISION_WINDOW_ON, useValue: true },
      UsageDashboardService,
    ],
  };
}
