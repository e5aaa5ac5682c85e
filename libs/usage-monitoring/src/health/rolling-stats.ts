import { Inject, Injectable } from '@nestjs/common';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';

const WINDOW_SECONDS = 300;
export const WARNING_ERROR_RATE = 5;
export const CRITICAL_ERROR_RATE = 10;

export type UsageHealthStatus = 'healthy' | 'warning' | 'critical';

/** The original's lightweight stats, over the last 5 minutes. No user ids, paths or limits. */
export interface UsageStatsSnapshot {
  status: UsageHealthStatus;
  icon: string;
  recent_requests: number;
  recent_errors: number;
  /** Percent, two decimals. */
  error_rate: number;
  timestamp: string;
}

const ICONS: Record<UsageHealthStatus, string> = { healthy: '✅', warning: '⚠️', critical: '🚨' };

/**
 * Requests and errors (status ≥ 500) of metered routes in one-second buckets over 5 minutes: O(1) to
 * record, a fixed 300-bucket sum to read, never a database query.
 */
@Injectable()
export class RollingStats {
  private readonly requests = new Uint32Array(WINDOW_SECONDS);
  private readonly errors = new Uint32Array(WINDOW_SECONDS);
  private readonly seconds = new Float64Array(WINDOW_SECONDS).fill(-1);
  private readonly clock: () => number;

  constructor(@Inject(NORMALIZED_OPTIONS) options: NormalizedUsageOptions) {
    this.clock = options.clock;
  }

  record(statusCode: number): void {
    const second = Math.floor(this.clock() / 1000);
    const i = second % WINDOW_SECONDS;
    if (this.seconds[i] !== second) {
      this.seconds[i] = second;
      this.requests[i] = 0;
      this.errors[i] = 0;
    }
    this.requests[i]++;
    if (statusCode >= 500) this.errors[i]++;
  }

  snapshot(): UsageStatsSnapshot {
    const now = this.clock();
    const second = Math.floor(now / 1000);
    let requests = 0;
    let errors = 0;
    for (let i = 0; i < WINDOW_SECONDS; i++) {
      if (this.seconds[i] > second - WINDOW_SECONDS && this.seconds[i] <= second) {
        requests += this.requests[i];
        errors += this.errors[i];
      }
    }
    const rate = requests === 0 ? 0 : Math.round((errors / requests) * 10_000) / 100;
    const status: UsageHealthStatus =
      rate > CRITICAL_ERROR_RATE ? 'critical' : rate > WARNING_ERROR_RATE ? 'warning' : 'healthy';
    return {
      status,
      icon: ICONS[status],
      recent_requests: requests,
      recent_errors: errors,
      error_rate: rate,
      timestamp: new Date(now).toISOString(),
    };
  }
}
