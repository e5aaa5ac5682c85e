import { Inject, Injectable } from '@nestjs/common';
import { HealthIndicatorService, type HealthIndicatorResult } from '@nestjs/terminus';
import type { UsageStore } from '../storage/usage-store.interface';
import { USAGE_STORE } from '../usage-monitoring.internal-constants';

/**
 * Health of the usage store, for `@nestjs/terminus`. Add it to your own `/health`:
 *
 * @example
 * ```ts
 * @Get('health')
 * @HealthCheck()
 * check() {
 *   return this.health.check([() => this.usage.isHealthy('usage_store')]);
 * }
 * ```
 */
@Injectable()
export class UsageHealthIndicator {
  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(
    private readonly indicators: HealthIndicatorService,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
  ) {}

  /** `up` when the usage store can decide requests, else `down` with a coarse reason (never a path or DSN). */
  async isHealthy<K extends string = 'usage_store'>(
    key: K = 'usage_store' as K,
  ): Promise<HealthIndicatorResult<K>> {
    const indicator = this.indicators.check(key);
    let health;
    try {
      health = await this.store.health();
    } catch {
      health = { up: false, reason: 'health check failed' };
    }
    return health.up ? indicator.up() : indicator.down({ reason: health.reason ?? 'unavailable' });
  }
}
