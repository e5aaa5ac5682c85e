import {
  Inject,
  Logger,
  Module,
  type ConfigurableModuleAsyncOptions,
  type DynamicModule,
  type OnApplicationShutdown,
  type OnModuleInit,
  type Provider,
} from '@nestjs/common';
import { DiscoveryModule, DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { TerminusModule } from '@nestjs/terminus';
import { Metered } from './decorators/metered.decorator';
import { startupSummary } from './startup-summary';
import { UsageAlerts } from './alerts/usage-alerts.service';
import { EnforcementMetrics } from './enforcement/enforcement-metrics';
import { UsageLimitGuard } from './enforcement/usage-limit.guard';
import { RollingStats } from './health/rolling-stats';
import { UsageHealthController } from './health/usage-health.controller';
import { UsageHealthIndicator } from './health/usage-health.indicator';
import { MeteringInterceptor } from './metering/metering.interceptor';
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
      { storage, clock, clockSkew, enforcementTimeoutMs }: NormalizedUsageOptions,
      metrics: EnforcementMetrics,
    ): UsageStore =>
      storage.type === 'shared'
        ? new SharedPostgresStore(storage, clock, clockSkew)
        : new PerUserSqliteStore({
            ...storage,
            clock,
            stallMs: enforcementTimeoutMs,
            onReservationsReleased: (n) => metrics.recordReleasedByTtl(n),
          }),
    inject: [NORMALIZED_OPTIONS, EnforcementMetrics],
  },
  EnforcementMetrics,
  RollingStats,
  UsageAlerts,
  UsageService,
  UsageHealthIndicator,
  UsageLimitGuard,
  MeteringInterceptor,
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
    RollingStats,
    UsageAlerts,
    UsageService,
    UsageHealthIndicator,
    UsageLimitGuard,
    MeteringInterceptor,
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
  ) {
    super();
  }

  /** Configures the module with options known at import time. */
  static override forRoot(
    options: UsageMonitoringModuleOptions & UsageMonitoringModuleExtras,
  ): DynamicModule {
    return withController(super.forRoot(options), options.healthController);
  }

  /**
   * Configures the module with options from a factory (`useFactory` + `inject`), a class (`useClass`,
   * implementing `createUsageMonitoringOptions()`) or an existing provider (`useExisting`).
   */
  static override forRootAsync(
    options: ConfigurableModuleAsyncOptions<UsageMonitoringModuleOptions, 'createUsageMonitoringOptions'> &
      UsageMonitoringModuleExtras,
  ): DynamicModule {
    return withController(super.forRootAsync(options), options.healthController);
  }

  async onModuleInit(): Promise<void> {
    try {
      this.options.catalog.checkScopes(new Set([...this.options.knownProviders, ...this.meteredProviders()]));
    } catch (e) {
      throw new Error(`UsageMonitoringModule: ${(e as Error).message}`);
    }
    await this.store.init?.();
    const summary = startupSummary(this.options);
    if (this.options.emergencyFailOpen) this.logger.warn(summary);
    else this.logger.log(summary);
  }

  /** The providers `@Metered` names on the app's controllers and their handlers (inherited ones too). */
  private meteredProviders(): string[] {
    const found: string[] = [];
    for (const { metatype } of this.discovery.getControllers()) {
      if (typeof metatype !== 'function') continue;
      const proto = metatype.prototype as object;
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
    await this.store.close();
  }
}

function withController(definition: DynamicModule, healthController: boolean | undefined): DynamicModule {
  return healthController === false ? definition : { ...definition, controllers: [UsageHealthController] };
}
