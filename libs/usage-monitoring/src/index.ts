/**
 * nestjs-usage-monitoring: meters what each user spends on external APIs and enforces their plan's
 * limits before a request reaches the provider.
 *
 * @packageDocumentation
 */

// The module and its options
export { UsageMonitoringModule } from './usage-monitoring.module';
export type {
  SqliteStorageOptions,
  StorageOptions,
  UsageMonitoringModuleExtras,
  AlertWebhookOptions,
  UsageAlertsOptions,
  UsageMetricsOptions,
  UsageMonitoringModuleOptions,
  UsageRequest,
} from './usage-monitoring.options';
export type { SharedStorageOptions } from './storage/shared/shared-store.options';
export type { Limit, LimitMetric, PeriodUnit, Plan, PlanAssignment } from './plans/plan.interface';
export type { PriceOverride } from './pricing/price.interface';

// Binding metering to routes
export { UsageLimitGuard } from './enforcement/usage-limit.guard';
export { MeteringInterceptor } from './metering/metering.interceptor';
export { Metered } from './decorators/metered.decorator';
export type { MeteredOptions } from './decorators/metered.decorator';
export { SkipMetering } from './decorators/skip-metering.decorator';
export { InjectUsageMonitoringOptions } from './decorators/inject.decorators';
export type { RequestResponse } from './enforcement/execution-contexts';

// Metering provider calls in services and handlers
export { UsageMeter } from './metering/usage-meter';
export type { MeterSpec, UsageCharge } from './metering/usage-meter';
export type { UsageEstimate, UsageFigures } from './metering/usage-figures';

// What a refused request answers
export { UsageLimitExceededException } from './enforcement/usage-limit-exceeded.exception';
export type { UsageLimitExceededBody } from './enforcement/usage-limit-exceeded.exception';
export {
  ENFORCEMENT_UNAVAILABLE_BODY,
  EnforcementUnavailableException,
} from './enforcement/enforcement-unavailable.exception';
export { UnknownModelException } from './enforcement/unknown-model.exception';
export { ENFORCEMENT_FAILURE_REASONS, USAGE_LIMIT_CODES } from './usage-monitoring.constants';

// Reading usage
export { UsageService } from './usage/usage.service';
export type { LimitUsage, UsageReport } from './usage/usage-report.interface';
export type { EnforcementStats } from './enforcement/enforcement-metrics';
export { UsageAlerts } from './alerts/usage-alerts.service';
export type { UsageAlert } from './alerts/usage-alert.interface';
export { alertKey } from './alerts/alert-webhooks';
export type { AlertWebhookBody } from './alerts/alert-webhooks';
export { UsageHealthIndicator } from './health/usage-health.indicator';
export { METER_NAME } from './metrics/usage-metrics';

// Steering: grants, resets and limit overrides per user, with their history
export { UsageAdminService, InvalidAdjustmentException } from './admin/usage-admin.service';
export { UsageAdminController } from './admin/usage-admin.controller';
export type { UserAdminView } from './admin/usage-admin.controller';
export type {
  AdjustmentNote,
  ClearLimitInput,
  GrantInput,
  LimitOverride,
  LimitSelector,
  LimitShare,
  ListInput,
  ResetInput,
  SetLimitInput,
  TopInput,
  TopSpender,
  UsageAdjustment,
  UserOverShare,
} from './admin/usage-adjustment.interface';

// Storage (the shared store on a DataSource of the host's)
export { USAGE_ENTITIES } from './storage/entities';
export { USAGE_MIGRATIONS } from './storage/migrations';
