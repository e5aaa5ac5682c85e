import {
  Inject,
  Module,
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
import {
  ASYNC_OPTIONS_TYPE,
  ConfigurableModuleClass,
  MODULE_OPTIONS_TOKEN,
  OPTIONS_TYPE,
} from './usage-monitoring.module-definition';
import { NORMALIZED_OPTIONS, USAGE_STORE } from './usage-monitoring.internal-constants';
import { normalizeOptions, type NormalizedUsageOptions } from './usage-monitoring.normalized-options';
import type { UsageMonitoringModuleOptions } from './usage-monitoring.options';

const providers: Provider[] = [
  {
    provide: NORMALIZED_OPTIONS,
    useFactory: (options: UsageMonitoringModuleOptions) => normalizeOptions(options),
    inject: [MODULE_OPTIONS_TOKEN],
  },
  {
    provide: USAGE_STORE,
    useFactory: ({ storage, clock, clockSkew, enforcementTimeoutMs }: NormalizedUsageOptions): UsageStore =>
      storage.type === 'custom'
        ? storage.store
        : storage.type === 'shared'
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
  constructor(@Inject(USAGE_STORE) private readonly store: UsageStore) {
    super();
  }

  static override forRoot(options: typeof OPTIONS_TYPE): DynamicModule {
    return withController(super.forRoot(options), options.healthController);
  }

  static override forRootAsync(options: typeof ASYNC_OPTIONS_TYPE): DynamicModule {
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
