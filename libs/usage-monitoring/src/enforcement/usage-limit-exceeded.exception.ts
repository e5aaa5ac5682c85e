import { HttpException, HttpStatus } from '@nestjs/common';
import { microsToUsd } from '../pricing/money';
import type { ExceededLimit } from '../storage/usage-store.interface';
import { USAGE_LIMIT_CODES } from '../usage-monitoring.constants';
import { rateLimitHeaders } from './rate-limit-headers';

/** Body of a 429: the fields of the system this library replaces, plus a stable `code`. */
export interface UsageLimitExceededBody {
  /** Always `'Usage limit exceeded'`. */
  error: 'Usage limit exceeded';
  /** A sentence for people: which limit, how much of it is used, when it resets. */
  message: string;
  /** Which metric tripped; one of `USAGE_LIMIT_CODES`. */
  code: (typeof USAGE_LIMIT_CODES)[keyof typeof USAGE_LIMIT_CODES];
  /** The provider the request was metered for. */
  provider: string;
  /** The limit that tripped, in the units a person reads (US dollars for cost). */
  usage_info: {
    metric: 'calls' | 'tokens' | 'cost';
    /** A provider, a provider group or `'*'`. */
    scope: string;
    period: 'month' | 'day' | 'hour' | 'minute';
    /** Used plus reserved by requests in flight. */
    current: number;
    limit: number;
    /** `current` in percent of `limit`, two decimals; a limit of 0 reads as 100. */
    percentage: number;
    /** ISO 8601 time the period ends. */
    reset_at: string;
  };
}

const PERIOD_ADJECTIVE = { month: 'Monthly', day: 'Daily', hour: 'Hourly', minute: 'Per-minute' } as const;

/** Percentage of `max` used, two decimals; a zero limit reads as 100 %. */
export function percentageOf(used: number, max: number): number {
  if (max <= 0) return 100;
  return Math.round((used / max) * 10_000) / 100;
}

/**
 * 429 Too Many Requests: a limit of the user's plan has no room for this request. `UsageLimitGuard` sends
 * `headers` (`Retry-After`, `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*`, `x-should-retry`) with it.
 */
export class UsageLimitExceededException extends HttpException {
  constructor(
    body: UsageLimitExceededBody,
    /** The rate-limit response headers of this refusal. */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(body, HttpStatus.TOO_MANY_REQUESTS);
  }

  /** The 429 body. */
  override getResponse(): UsageLimitExceededBody {
    return super.getResponse() as UsageLimitExceededBody;
  }
}

/** The refusal of a request for the limit `exceeded`, at `now`. */
export function limitExceeded(
  exceeded: ExceededLimit,
  provider: string,
  now: number,
): UsageLimitExceededException {
  return new UsageLimitExceededException(
    limitExceededBody(exceeded, provider),
    rateLimitHeaders(exceeded, now),
  );
}

function limitExceededBody(
  { charge, used: settled, reserved }: ExceededLimit,
  provider: string,
): UsageLimitExceededBody {
  // What counts against the limit: settled usage plus what requests in flight hold.
  const used = settled + reserved;
  const isCost = charge.metric === 'cost';
  const current = isCost ? microsToUsd(used) : used;
  const limit = isCost ? microsToUsd(charge.max) : charge.max;
  const shown = (n: number) => (isCost ? `$${n.toFixed(6)}` : String(n));
  const resetAt = new Date(charge.periodEnd).toISOString();
  const limitName = `${charge.metric} limit for ${charge.scope}`;
  const remaining = charge.max - used;
  let message: string;
  if (charge.max === 0) {
    message = `${PERIOD_ADJECTIVE[charge.period]} ${limitName} allows none. It resets at ${resetAt}.`;
  } else if (remaining > 0 && charge.amount > remaining) {
    // Not used up: this request alone may need more than is left (its estimate: prompt + max_tokens).
    const asks = isCost
      ? `may cost up to ${shown(microsToUsd(charge.amount))}; ${shown(microsToUsd(remaining))} remains`
      : `may use up to ${charge.amount} tokens; ${remaining} ${remaining === 1 ? 'token remains' : 'tokens remain'}`;
    message =
      `This request ${asks} of the ${PERIOD_ADJECTIVE[charge.period].toLowerCase()} ${limitName} ` +
      `(${shown(current)} of ${shown(limit)} used). Ask for fewer output tokens (max_tokens) to need less. ` +
      `It resets at ${resetAt}.`;
  } else {
    message = `${PERIOD_ADJECTIVE[charge.period]} ${limitName} reached (${shown(current)} of ${shown(limit)} used). It resets at ${resetAt}.`;
  }
  return {
    error: 'Usage limit exceeded',
    message,
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
