import type { UsageAlert } from '../alerts/usage-alert.interface';
import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';

/** One limit of a request, resolved to the current period, with the amount to reserve. */
export interface LimitCharge {
  /** `scope:metric:period`, stable across periods. */
  limitId: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  periodKey: string;
  periodStart: number;
  periodEnd: number;
  /** Calls, tokens or micro-dollars. */
  max: number;
  /** Reserved by this request (calls, tokens or micro-dollars). */
  amount: number;
  /**
   * A shadow limit on this counter (`Limit.mode: 'shadow'`): checked like `max` (with the counter's
   * adjustments) but never refuses; the store reports it (`ReserveResult.shadow`).
   */
  shadowMax?: number;
  shadowLimitId?: string;
}

export interface ReserveRequest {
  requestId: string;
  userId: string;
  provider: string;
  charges: LimitCharge[];
  now: number;
  /**
   * With durable intent: the ledger row to record if the request is never settled (the process died while
   * it ran), charged at its estimate. Stores that keep intents commit it before admitting the request.
   */
  interrupted?: UsageEventRecord;
}

export interface Reservation {
  requestId: string;
  userId: string;
  provider: string;
  charges: LimitCharge[];
  createdAt: number;
  /**
   * Set by the store when it admitted the request only once its charge at the estimate was durable (durable
   * intent, `ReserveRequest.interrupted`): a crash before its settlement commits still charges it, so the
   * caller need not wait for that commit. Not set for a request admitted without one (a lease's).
   */
  intent?: boolean;
}

/**
 * The limit a request would exceed, as the user sees it: `charge.max` includes what was granted for the
 * period and `used` leaves out what a reset forgave (see `CounterAdjustment`).
 */
export interface ExceededLimit {
  charge: LimitCharge;
  used: number;
  reserved: number;
}

export type ReserveResult =
  | {
      admitted: true;
      reservation: Reservation;
      /** A shadow limit that would have refused the request (its charge with the shadow limit's id and max). */
      shadow?: ExceededLimit;
    }
  | { admitted: false; exceeded: ExceededLimit };

/** One row of the append-only ledger (`usage_events`). */
export interface UsageEventRecord {
  requestId: string;
  userId: string;
  provider: string;
  model: string | null;
  endpoint: string;
  method: string;
  statusCode: number;
  inputTokens: number;
  outputTokens: number;
  /** Of `inputTokens`: read from a prompt cache. */
  cachedInputTokens: number;
  /** Of `inputTokens`: written to a prompt cache. */
  cacheWriteTokens: number;
  /** Of `outputTokens`: reasoning tokens. */
  reasoningTokens: number;
  costMicros: number;
  /** Where the price came from (see `PricedUsage.priceVersion`); null when nothing priced the row. */
  priceVersion: string | null;
  responseTimeMs: number;
  requestBytes: number;
  responseBytes: number;
  userAgent: string | null;
  ip: string | null;
  searches: number;
  images: number;
  pages: number;
  /** True when any number on the row is an estimate rather than the provider's own figure. */
  estimated: boolean;
  /**
   * `ok`, `error` (the handler failed), `partial` (the client left before the end, or a stream broke off) or
   * `interrupted` (the process died while the request ran: charged at its estimate, with durable intent).
   */
  outcome: 'ok' | 'error' | 'partial' | 'interrupted';
  /** The id of a shadow limit that would have refused the request (`scope:metric:period:shadow`), or null. */
  shadowRefused: string | null;
  /** The billing month key the reservation was made in. */
  periodKey: string;
  occurredAt: number;
}

/** One per-request monitoring row (`api_requests`). */
export interface ApiRequestRecord {
  requestId: string;
  userId: string;
  provider: string | null;
  path: string;
  method: string;
  statusCode: number;
  durationMs: number;
  occurredAt: number;
}

/** What a settled request actually consumed, per metric. */
export interface ActualUsage {
  calls: number;
  tokens: number;
  costMicros: number;
}

/** What the interceptor hands the store. The `api_requests` row is derived from the ledger row. */
export interface Settlement {
  actual: ActualUsage;
  event: UsageEventRecord;
}

export interface SettleResult {
  /** Thresholds crossed by this settlement (already stored). */
  alerts: UsageAlert[];
}

export interface CounterKey {
  scope: string;
  metric: LimitMetric;
  periodKey: string;
}

export interface CounterSnapshot extends CounterKey {
  /** Settled usage of the period, less what resets forgave. */
  used: number;
  reserved: number;
  /** Granted on top of the limit for this period (calls, tokens or micro-dollars). */
  granted: number;
}

/** An admin change to one counter of the current period: extra quota, or a reset of what was used. */
export interface CounterAdjustment {
  kind: 'grant' | 'reset';
  userId: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  periodKey: string;
  periodEnd: number;
  /** For a grant: how much (calls, tokens or micro-dollars). A reset forgives whatever is used then. */
  amount: number;
  actor: string;
  reason: string;
  now: number;
}

/** An admin change to one of a user's limits: a new `max` (until a time, or for good), or back to the plan's. */
export interface LimitOverrideChange {
  kind: 'override' | 'override_cleared';
  userId: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  /** The new limit (calls, tokens or micro-dollars); null when cleared. */
  max: number | null;
  /** Until when it applies (ms); null for good. */
  until: number | null;
  actor: string;
  reason: string;
  now: number;
}

/** A user's limit override as the stores keep it. */
export interface StoredOverride {
  userId: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  max: number;
  until: number | null;
}

/** One row of the audit history of admin changes (never deleted). Amounts in store units. */
export interface StoredAdjustment {
  id: string;
  userId: string;
  kind: 'grant' | 'reset' | 'override' | 'override_cleared';
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  /** The period a grant or reset applied to; null for overrides. */
  periodKey: string | null;
  /** A grant's amount, or what a reset forgave; null for overrides. */
  amount: number | null;
  /** An override's new limit; null otherwise. */
  max: number | null;
  until: number | null;
  actor: string;
  reason: string;
  createdAt: number;
}

/** A user's counter of a period not yet ended (`UsageStore.currentCounters`). */
export interface SpendingCounter {
  userId: string;
  scope: string;
  metric: LimitMetric;
  periodKey: string;
  periodEnd: number;
  /** Settled usage of the period, less what resets forgave. */
  used: number;
  /** Granted on top of the limit for this period. */
  granted: number;
}

/** A user's ledger totals over some billing months (`UsageStore.topSpenders`). */
export interface SpendingTotal {
  userId: string;
  /** Ledger rows (metered calls). */
  calls: number;
  /** Input plus output tokens. */
  tokens: number;
  costMicros: number;
  /** The latest of the billing months the rows are of. */
  periodKey: string;
}

/** One ledger row as a user's activity shows it. */
export interface ActivityEvent {
  requestId: string;
  provider: string;
  model: string | null;
  inputTokens: number;
  outputTokens: number;
  costMicros: number;
  outcome: UsageEventRecord['outcome'];
  estimated: boolean;
  statusCode: number;
  occurredAt: number;
}

/** An alert a user's counter raised (the `usage_alerts` row). */
export interface ActivityAlert {
  periodKey: string;
  limitId: string;
  threshold: number;
  used: number;
  max: number;
  createdAt: number;
}

/** What a user's dashboard shows of their ledger (`UsageStore.userActivity`). */
export interface UserActivity {
  /** Their ledger rows of the billing month, per UTC day (epoch day: `floor(ms / 86,400,000)`), oldest first. */
  days: { day: number; calls: number; costMicros: number }[];
  /** Their latest ledger rows, newest first. */
  recent: ActivityEvent[];
  /** Their latest alerts, newest first. */
  alerts: ActivityAlert[];
}

export interface StoreHealth {
  up: boolean;
  /** A coarse reason, safe to show (never a path or DSN). */
  reason?: string;
}

/**
 * The storage seam. Reservation is atomic (all charges or none); `settle` resolves only once the
 * ledger row and counter deltas are durable.
 */
export interface UsageStore {
  /** Called once at module init (open files, take locks, run migrations). */
  init?(): Promise<void>;
  reserve(request: ReserveRequest): ReserveResult | Promise<ReserveResult>;
  /**
   * How long in all (ms) an admission may wait, instead of the enforcement timeout, while the store is
   * working for it rather than stalled; `undefined` when it is stalled (the admission gets its 503). The
   * per-user store answers while the user's database is opening (a first request since start-up, behind
   * other users' opens in a burst); the shared store while its statements keep going to the database (the
   * admission is in line behind a burst's). `since` (`Date.now()`): the start of the span the store is asked
   * about, the admission's start at its first deadline, then the last two enforcement timeouts. Asked at each
   * deadline of an admission still waiting (every `enforcementTimeoutMs`), never on the request path.
   */
  waitTimeoutMs?(userId: string, since: number): number | undefined;
  settle(reservation: Reservation, settlement: Settlement): Promise<SettleResult>;
  /** Returns an unused reservation without charging (e.g. the handler never ran). */
  release(reservation: Reservation): void | Promise<void>;
  recordRequest(request: ApiRequestRecord): Promise<void>;
  readCounters(userId: string, keys: CounterKey[]): Promise<CounterSnapshot[]>;
  /**
   * Applies a grant or reset to its counter atomically with admissions (the next decision sees it) and
   * appends it to the audit history.
   */
  adjustCounter(change: CounterAdjustment): Promise<StoredAdjustment>;
  /** Stores or clears a limit override and appends it to the audit history. */
  overrideLimit(change: LimitOverrideChange): Promise<StoredAdjustment>;
  /** Every override in force at `now` (loaded at start-up), or one user's. */
  overrides(now: number, userId?: string): Promise<StoredOverride[]>;
  /** A user's audit history, newest first. */
  adjustments(userId: string, limit: number): Promise<StoredAdjustment[]>;
  /**
   * Every user's counters of periods that have not ended at `now`, settled usage only. Served from a
   * summary (the per-user store's index, the shared store's counter table), never by opening users' files.
   */
  currentCounters(now: number): Promise<SpendingCounter[]>;
  /**
   * The `limit` users with the most `by` over the ledger rows of the given billing months (`periodKey` of
   * the rows), most first, ties by user id.
   */
  topSpenders(query: {
    by: 'calls' | 'tokens' | 'cost';
    periodKeys: readonly string[];
    limit: number;
  }): Promise<SpendingTotal[]>;
  /**
   * One user's ledger for their dashboard: the billing month `periodKey` per day, the latest `recent` rows
   * and alerts. Includes every settlement acknowledged so far.
   */
  userActivity(userId: string, query: { periodKey: string; recent: number }): Promise<UserActivity>;
  /**
   * Tells `onChange` the id of a user whose overrides another instance changed, or `undefined` when
   * changes may have been missed (reload all). Shared store only.
   */
  watchOverrides?(onChange: (userId: string | undefined) => void): void;
  health(): Promise<StoreHealth>;
  close(): Promise<void>;
}
