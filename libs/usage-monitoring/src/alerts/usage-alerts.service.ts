import { Inject, Injectable, Logger } from '@nestjs/common';
import { Subject, type Observable } from 'rxjs';
import { escapeForLog } from '../enforcement/throttled-logger';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { UsageAlert } from './usage-alert.interface';

/**
 * Publishes threshold alerts (80/90/100 %). Each fires once per user, period, limit and threshold: the
 * store reports a threshold only when committed usage first crosses it, and keeps a `usage_alerts` row.
 *
 * @example
 * ```ts
 * constructor(alerts: UsageAlerts) {
 *   alerts.alerts$.subscribe((a) => notify(a.userId, `${a.threshold}% of ${a.limitId}`));
 * }
 * ```
 */
@Injectable()
export class UsageAlerts {
  private readonly logger = new Logger('UsageMonitoring');
  private readonly subject = new Subject<UsageAlert>();
  /** Every alert, as it fires. */
  readonly alerts$: Observable<UsageAlert> = this.subject.asObservable();

  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(@Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions) {}

  /** @internal Called with the alerts a settlement crossed (already stored). */
  publish(alerts: readonly UsageAlert[]): void {
    for (const a of alerts) {
      this.logger.warn(
        `usage alert: user "${escapeForLog(a.userId, 64)}" reached ${a.threshold}% of ${a.limitId} (${a.periodKey})`,
      );
      try {
        this.options.onAlert?.(a);
      } catch (e) {
        this.logger.error(`onAlert threw: ${(e as Error).message}`);
      }
      this.subject.next(a);
    }
  }
}
