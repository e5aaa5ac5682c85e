import { Injectable } from '@nestjs/common';
import type { EnforcementFailureReason } from '../usage-monitoring.constants';

/** Read-only view of enforcement failures, by `reason:provider`. */
export interface EnforcementStats {
  /** Requests answered 503 (or let through by fail-open), by `reason:provider`. */
  failures: Record<string, number>;
  /** Requests let through while enforcement was unavailable (`USAGE_LIMITS_EMERGENCY_FAIL_OPEN`), by provider. */
  failOpen: Record<string, number>;
  /** Settlements that could not be recorded (the requests themselves were not failed). */
  trackingFailures: number;
  /** Reservations released because no settlement came within `storage.reservationTtlMs` (per-user store). */
  releasedByTtl: number;
}

/** Counts enforcement failures and fail-open passes so they can be read (stats, metrics). */
@Injectable()
export class EnforcementMetrics {
  private readonly failures = new Map<string, number>();
  private readonly failOpen = new Map<string, number>();
  private tracking = 0;
  private releasedByTtl = 0;

  recordFailure(reason: EnforcementFailureReason, provider: string): void {
    const key = `${reason}:${provider}`;
    this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
  }

  recordFailOpen(provider: string): void {
    this.failOpen.set(provider, (this.failOpen.get(provider) ?? 0) + 1);
  }

  /** Usage that could not be recorded after the response (the request itself was not failed). */
  recordTrackingFailure(): void {
    this.tracking++;
  }

  /** Reservations the TTL sweep released. */
  recordReleasedByTtl(count: number): void {
    this.releasedByTtl += count;
  }

  snapshot(): EnforcementStats {
    return {
      failures: Object.fromEntries(this.failures),
      failOpen: Object.fromEntries(this.failOpen),
      trackingFailures: this.tracking,
      releasedByTtl: this.releasedByTtl,
    };
  }
}
