export { UsageMonitoringModule } from './usage-monitoring.module';
export type {
  CustomStorageOptions,
  SharedStorageOptions,
  SqliteStorageOptions,
  StorageOptions,
  UsageMonitoringModuleExtras,
  UsageMonitoringModuleOptions,
  UsageRequest,
} from './usage-monitoring.options';
export type { SharedLeaseOptions } from './storage/shared/shared-store.options';
export {
  AI_TEXT_GROUP,
  ALERT_THRESHOLDS,
  EMERGENCY_FAIL_OPEN_ENV,
  ENFORCEMENT_FAILURE_REASONS,
  ENFORCEMENT_UNAVAILABLE_CODE,
  RATE_LIMIT_HEADERS,
  USAGE_LIMIT_CODES,
} from './usage-monitoring.constants';
export type { EnforcementFailureReason, UsageLimitCode } from './usage-monitoring.constants';

export { Metered } from './decorators/metered.decorator';
export type { MeteredOptions } from './decorators/metered.decorator';
export { SkipMetering } from './decorators/skip-metering.decorator';
export { UsageMetered } from './decorators/usage-metered.decorator';
export { InjectUsageMonitoringOptions, InjectUsageStore } from './decorators/inject.decorators';

export { UsageLimitGuard } from './enforcement/usage-limit.guard';
export {
  USAGE_LIMIT_EXCEEDED_ERROR,
  UsageLimitExceededException,
} from './enforcement/usage-limit-exceeded.exception';
export type { UsageInfo, UsageLimitExceededBody } from './enforcement/usage-limit-exceeded.exception';
export {
  ENFORCEMENT_UNAVAILABLE_BODY,
  EnforcementUnavailableException,
} from './enforcement/enforcement-unavailable.exception';
export { EnforcementMetrics } from './enforcement/enforcement-metrics';
export { UNKNOWN_MODEL_CODE, UnknownModelException } from './enforcement/unknown-model.exception';
export type { EnforcementStats } from './enforcement/enforcement-metrics';

export { MeteringInterceptor } from './metering/metering.interceptor';
export { UsageExtractor } from './metering/usage-extractor';
export type { MeasuredUsage } from './metering/usage-extractor';

export type { Limit, LimitMetric, PeriodUnit, Plan, PlanAssignment } from './plans/plan.interface';
export { periodWindow } from './plans/billing-period';
export type { PeriodWindow } from './plans/billing-period';

export { PriceBook } from './pricing/price-book';
export type { PriceBookOptions, PricedUsage, UnknownModelPolicy } from './pricing/price-book';
export { CATALOG_NAME, CATALOG_VERSION } from './pricing/catalog';
export { DEFAULT_MODELS, DEFAULT_PRICES } from './pricing/default-prices';
export { formatUsd, microsToUsd, usdToMicros, MICROS_PER_USD } from './pricing/money';
export type { Price, PriceOverride, TokenRates } from './pricing/price.interface';
export { StreamUsage } from './metering/stream-usage';

export { DEFAULT_PROVIDER_PATTERNS, DEFAULT_IGNORED_PATH_PREFIXES } from './providers/provider-detector';

export { PerUserSqliteStore } from './storage/sqlite/per-user-sqlite.store';
export { SharedPostgresStore } from './storage/shared/shared-postgres.store';
export { sharedUserId } from './storage/shared/shared-user-id';
export { UserDataSourceFactory } from './storage/sqlite/user-data-source.factory';
export { userFileName } from './storage/sqlite/user-file-name';
export { JOURNAL_FILE } from './storage/sqlite/usage-journal';
export { UsageStoreError } from './storage/usage-store.error';
export type * from './storage/usage-store.interface';
export { USAGE_ENTITIES } from './storage/entities';
export {
  ApiRequestEntity,
  UsageAlertEntity,
  UsageCounterEntity,
  UsageEventEntity,
  UsageReservationEntity,
} from './storage/entities';
export { USAGE_MIGRATIONS, USAGE_MIGRATIONS_TABLE } from './storage/migrations';

export { UsageHealthIndicator } from './health/usage-health.indicator';
export { RollingStats } from './health/rolling-stats';
export type { UsageStatsSnapshot } from './health/rolling-stats';

export { UsageAlerts } from './alerts/usage-alerts.service';
export type { UsageAlert } from './alerts/usage-alert.interface';

export { UsageService } from './usage/usage.service';
export type { LimitUsage, UsageReport } from './usage/usage-report.interface';
