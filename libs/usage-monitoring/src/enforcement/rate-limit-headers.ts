import { formatUsd } from '../pricing/money';
import type { ExceededLimit } from '../storage/usage-store.interface';
import { RATE_LIMIT_HEADERS as H } from '../usage-monitoring.constants';

/** Beyond this wait a client should not retry: official OpenAI and Anthropic SDKs honour `x-should-retry`. */
const NO_RETRY_AFTER_SECONDS = 60;

/**
 * Headers of a 429: `Retry-After`, the IETF `RateLimit-Policy` / `RateLimit` fields (quota units:
 * calls, tokens or micro-dollars) and the `X-RateLimit-*` trio (USD for cost; reset in seconds).
 */
export function rateLimitHeaders(
  { charge, used, reserved }: ExceededLimit,
  now: number,
): Record<string, string> {
  const resetSeconds = Math.max(1, Math.ceil((charge.periodEnd - now) / 1000));
  const windowSeconds = Math.round((charge.periodEnd - charge.periodStart) / 1000);
  const remaining = Math.max(0, charge.max - used - reserved);
  const name = JSON.stringify(charge.limitId);
  const isCost = charge.metric === 'cost';
  const headers: Record<string, string> = {
    [H.retryAfter]: String(resetSeconds),
    [H.policy]: `${name};q=${charge.max};w=${windowSeconds}`,
    [H.rateLimit]: `${name};r=${remaining};t=${resetSeconds}`,
    [H.limit]: isCost ? formatUsd(charge.max) : String(charge.max),
    [H.remaining]: isCost ? formatUsd(remaining) : String(remaining),
    [H.reset]: String(resetSeconds),
  };
  if (resetSeconds > NO_RETRY_AFTER_SECONDS) headers[H.shouldRetry] = 'false';
  return headers;
}

/** Sets headers on an Express or Fastify response. */
export function setHeaders(response: unknown, headers: Record<string, string>): void {
  const res = response as {
    header?: (name: string, value: string) => unknown;
    setHeader?: (name: string, value: string) => unknown;
  };
  for (const [name, value] of Object.entries(headers)) {
    if (typeof res.header === 'function') res.header(name, value);
    else res.setHeader?.(name, value);
  }
}
