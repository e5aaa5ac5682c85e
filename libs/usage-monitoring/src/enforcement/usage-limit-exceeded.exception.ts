import { HttpException, HttpStatus } from '@nestjs/common';
import { microsToUsd } from '../pricing/money';
import type { ExceededLimit } from '../storage/usage-store.interface';
import { USAGE_LIMIT_CODES, type UsageLimitCode } from '../usage-monitoring.constants';

export const USAGE_LIMIT_EXCEEDED_ERROR = 'Usage limit exceeded';

/** Details of the limit that refused a request, in the units a person reads (USD for cost). */
export interface UsageInfo {
  metric: 'calls' | 'tokens' | 'cost';
  scope: string;
  period: string;
  current: number;
  limit: number;
  percentage: number;
  reset_at: string;
}

/** Body of a 429. */
export interface UsageLimitExceededBody {
  error: typeof USAGE_LIMIT_EXCEEDED_ERROR;
  message: string;
  code: UsageLimitCode;
  provider: string;
  usage_info: UsageInfo;
}

const PERIOD_ADJECTIVE = { month: 'Monthly', day: 'Daily', hour: 'Hourly', minute: 'Per-minute' } as const;

/** Percentage of `max` used, two decimals; a zero limit reads as 100 %. */
export function percentageOf(used: number, max: number): number {
  if (max <= 0) return 100;
  return Math.round((used / max) * 10_000) / 100;
}

/** 429 Too Many Requests with the body of the design: original fields plus a stable `code`. */
export class UsageLimitExceededException extends HttpException {
  constructor(
    readonly exceeded: ExceededLimit,
    readonly provider: string,
  ) {
    super(UsageLimitExceededException.body(exceeded, provider), HttpStatus.TOO_MANY_REQUESTS);
  }

  static body({ charge, used: settled, reserved }: ExceededLimit, provider: string): UsageLimitExceededBody {
    // What counts against the limit: settled usage plus what requests in flight hold.
    const used = settled + reserved;
    const isCost = charge.metric === 'cost';
    const current = isCost ? microsToUsd(used) : used;
    const limit = isCost ? microsToUsd(charge.max) : charge.max;
    const shown = (n: number) => (isCost ? `$${n.toFixed(6)}` : String(n));
    const resetAt = new Date(charge.periodEnd).toISOString();
    const what = charge.max === 0 ? 'allows none' : `reached (${shown(current)} of ${shown(limit)} used)`;
    return {
      error: USAGE_LIMIT_EXCEEDED_ERROR,
      message: `${PERIOD_ADJECTIVE[charge.period]} ${charge.metric} limit for ${charge.scope} ${what}. It resets at ${resetAt}.`,
      code: USAGE_LIMIT_CODES[charge.metric],
      provider,
      usage_info: {
        metric: charge.metric,
        scope: charge.scope,
        period: charge.period,
        current,
        limit,
        percentage: percentageOf(used, charge.max),
        reset_at: resetAt,
      },
    };
  }
}
