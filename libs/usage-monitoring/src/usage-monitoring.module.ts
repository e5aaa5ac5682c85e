import {
  Inject,
  Module,
  type ConfigurableModuleAsyncOptions,
  type DynamicModule,
  type OnApplicationShutdown,
  type OnModuleInit,
  type Provider,
} from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
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
    useFactory: ({ storage, clock, clockSkew, enforcementTimeoutMs }: NormalizedUsageOptions): UsageStore =>
      storage.type === 'shared'
        ? new SharedPostgresStore(storage, clock, clockSkew)
        : new PerUserSqliteStore({ ...storage, clock, stallMs: enforcementTimeoutMs }),
    inject: [NORMALIZED_OPTIONS],
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
  imports: [TerminusModule],
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
  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(@Inject(USAGE_STORE) private readonly store: UsageStore) {
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
    await this.store.init?.();
  }

  async onApplicationShutdown(): Promise<void> {
    await this.store.close();
  }
}

function withController(definition: DynamicModule, healthController: boolean | undefined): DynamicModule {
  return healthController === false ? definition : { ...definition, controllers: [UsageHealthController] };
}
