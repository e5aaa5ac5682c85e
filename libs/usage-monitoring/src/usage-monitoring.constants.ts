/** Stable error codes carried in the `code` field of 429 and 503 bodies. */
export const USAGE_LIMIT_CODES = {
  calls: 'USAGE_LIMIT_CALLS',
  tokens: 'USAGE_LIMIT_TOKENS',
  cost: 'USAGE_LIMIT_COST',
} as const;

export type UsageLimitCode = (typeof USAGE_LIMIT_CODES)[keyof typeof USAGE_LIMIT_CODES];

export const ENFORCEMENT_UNAVAILABLE_CODE = 'USAGE_LIMIT_ENFORCEMENT_UNAVAILABLE';

/** Environment variable that lets metered requests through while the store is down. */
export const EMERGENCY_FAIL_OPEN_ENV = 'USAGE_LIMITS_EMERGENCY_FAIL_OPEN';

/** Reasons an enforcement failure is counted under (`reason:provider`). */
export const ENFORCEMENT_FAILURE_REASONS = [
  'plan_lookup_failed',
  'database_session_unavailable',
  'missing_usage_tables',
  'database_init_failed',
  'operational_error',
  'unexpected_enforcement_error',
] as const;

export type EnforcementFailureReason = (typeof ENFORCEMENT_FAILURE_REASONS)[number];

/** Alert thresholds, in percent of a limit. */
export const ALERT_THRESHOLDS = [80, 90, 100] as const;

/** Response headers set on a 429. */
export const RATE_LIMIT_HEADERS = {
  retryAfter: 'Retry-After',
  policy: 'RateLimit-Policy',
  rateLimit: 'RateLimit',
  limit: 'X-RateLimit-Limit',
  remaining: 'X-RateLimit-Remaining',
  reset: 'X-RateLimit-Reset',
  shouldRetry: 'x-should-retry',
} as const;

/** Providers whose calls share the "AI text calls" cap of the default plans. */
export const AI_TEXT_GROUP = 'ai_text';
