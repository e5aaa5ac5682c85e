import { Controller, Get, ServiceUnavailableException } from '@nestjs/common';
import { HealthCheck, HealthCheckService } from '@nestjs/terminus';
import { SkipMetering } from '../decorators/skip-metering.decorator';
import { RollingStats } from './rolling-stats';
import { UsageHealthIndicator } from './usage-health.indicator';

/**
 * `GET /health/usage`: terminus' answer for the usage store (200 up, 503 down) with the lightweight
 * stats under `usage`. O(1): it never opens a user database.
 */
@Controller('health/usage')
@SkipMetering()
export class UsageHealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicator: UsageHealthIndicator,
    private readonly stats: RollingStats,
  ) {}

  @Get()
  @HealthCheck()
  async check(): Promise<object> {
    const usage = this.stats.snapshot();
    try {
      const result = await this.health.check([() => this.indicator.isHealthy('usage_store')]);
      return { ...result, usage };
    } catch (e) {
      if (e instanceof ServiceUnavailableException) {
        throw new ServiceUnavailableException({ ...(e.getResponse() as object), usage });
      }
      throw e;
    }
  }
}
