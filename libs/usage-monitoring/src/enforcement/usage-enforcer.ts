import { HttpException, Inject, Injectable, Logger } from '@nestjs/common';
import { LimitOverrides } from '../admin/limit-overrides';
import { RollingStats } from '../health/rolling-stats';
import { newRequestId } from '../metering/request-id';
import { UsageMetrics } from '../metrics/usage-metrics';
import type { MeasuredUsage } from '../metering/usage-extractor';
import type { UsageEstimate } from '../metering/usage-figures';
import { PeriodClock } from '../plans/billing-period';
import { PlanLookupError } from '../plans/plan-lookup';
import type { ResolvedPlan } from '../plans/plan-resolver';
import type { PlanAssignment } from '../plans/plan.interface';
import type { PricedUsage } from '../pricing/price-book';
import { UsageStoreError } from '../storage/usage-store.error';
import type {
  LimitCharge,
  ReserveResult,
  UsageEventRecord,
  UsageStore,
} from '../storage/usage-store.interface';
import { USAGE_LIMIT_CODES, type EnforcementFailureReason } from '../usage-monitoring.constants';
import { NORMALIZED_OPTIONS, USAGE_STORE } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import { EnforcementUnavailableException } from './enforcement-unavailable.exception';
import { EnforcementMetrics } from './enforcement-metrics';
import type { MeteringContext } from './metering-context';
import { ThrottledLogger } from './throttled-logger';
import { UNKNOWN_MODEL_CODE, UnknownModelException } from './unknown-model.exception';
import { limitExceeded } from './usage-limit-exceeded.exception';

/** What one metered call asks to be admitted for. */
export interface AdmissionRequest {
  userId: string;
  provider: string;
  /** The model assumed when the request names none (`@Metered`, or the meter's spec). */
  model: string | undefined;
  /** The provider-shaped request the estimate reads: prompt, `max_tokens` and the like. */
  body: unknown;
  /** An estimate the app states instead (`@Metered({ estimate })`, the meter's spec): `body` is not read. */
  estimate?: UsageEstimate;
  /** Where the call is recorded from (the route's path), its method and request size. */
  endpoint: string;
  method: string;
  requestBytes: number;
}

class EnforcementTimeoutError extends Error {}

/** What an admission carries from its reservation to its metering context. */
interface Admission {
  req: AdmissionRequest;
  estimate: MeasuredUsage;
  ledgerPeriodKey: string;
  now: number;
}

/** An admission waiting for the store (`withTimeout`). */
interface Waiter {
  /** When it is next looked at (`Date.now()`): its 503, unless the store is still working for it. */
  deadline: number;
  /** Since when the store's progress is asked about at the deadline: the admission's start, then an interval before the last look. */
  since: number;
  /** Once extended: when it gets its 503 at the latest (its start plus the store's `waitTimeoutMs`). */
  limit: number;
  admission: Admission;
  resolve: (metering: MeteringContext | null) => void;
  reject: (e: unknown) => void;
  late: boolean;
  /** Given the store's longer timeout (`UsageStore.waitTimeoutMs`) at a deadline. */
  extended: boolean;
}

const isThenable = <T>(v: unknown): v is PromiseLike<T> =>
  typeof v === 'object' && v !== null && typeof (v as PromiseLike<T>).then === 'function';

/**
 * Admission, the same for every way a call is metered: the user's plan (a cached lookup with its own
 * deadline), the limits that apply and the request's estimate, then one all-or-none reservation within
 * `enforcementTimeoutMs`. Answers synchronously when the plan is cached and the store decides in memory.
 *
 * Refusals are thrown (or rejected): `UsageLimitExceededException` over a limit (with its headers),
 * `EnforcementUnavailableException` when the store or the plan lookup failed (counted by reason),
 * `UnknownModelException` for a model `unknownModels: 'deny'` refuses. With the emergency fail-open switch,
 * an unavailable store admits without a reservation: `null`.
 */
@Injectable()
export class UsageEnforcer {
  private readonly throttledLog = new ThrottledLogger(new Logger('UsageLimitGuard'));
  private readonly periods = new PeriodClock();
  /** Admissions waiting for the store, oldest first, and the timer that expires them. */
  private readonly waiting = new Set<Waiter>();
  /** Admissions past `enforcementTimeoutMs` that the store is still working for, oldest first. */
  private readonly extended = new Set<Waiter>();
  /** Admissions past their deadline, decided in the check phase after the event loop has polled (`expireDue`). */
  private due = new Set<Waiter>();
  private ticker: NodeJS.Timeout | undefined;

  /** @internal Nest injects these. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly metrics: EnforcementMetrics,
    private readonly stats: RollingStats,
    private readonly usageMetrics: UsageMetrics,
    private readonly overrides: LimitOverrides,
  ) {}

  admit(req: AdmissionRequest): MeteringContext | null | Promise<MeteringContext | null> {
    const now = this.options.clock();
    let assignment: PlanAssignment | undefined | Promise<PlanAssignment | undefined>;
    try {
      assignment = this.options.resolvePlan(req.userId);
    } catch (e) {
      return this.onFailure(e, req.provider);
    }
    if (!isThenable<PlanAssignment | undefined>(assignment)) return this.decide(req, assignment, now);
    return Promise.resolve(assignment).then(
      (a) => this.decide(req, a, now),
      (e) => this.onFailure(e, req.provider),
    );
  }

  /**
   * The reservation for a resolved plan: decided at once when the store answers synchronously, else awaited
   * within `enforcementTimeoutMs` (methods rather than closures per request: this runs on every one).
   */
  private decide(
    req: AdmissionRequest,
    assignment: PlanAssignment | undefined,
    now: number,
  ): MeteringContext | null | Promise<MeteringContext | null> {
    let admission: Admission;
    let outcome: ReserveResult | PromiseLike<ReserveResult>;
    try {
      const plan = this.options.plans.resolve(assignment);
      const built = this.charges(plan, req, now);
      const ledgerPeriodKey = this.periods.window('month', now, plan.anchorDay).key;
      const requestId = newRequestId();
      admission = { req, estimate: built.estimate, ledgerPeriodKey, now };
      outcome = this.store.reserve({
        requestId,
        userId: req.userId,
        provider: req.provider,
        charges: built.charges,
        now,
        interrupted: this.options.durableIntent
          ? interruptedRow(requestId, req, built, ledgerPeriodKey, now)
          : undefined,
      });
    } catch (e) {
      return this.onFailure(e, req.provider);
    }
    if (!isThenable<ReserveResult>(outcome)) return this.admitted(admission, outcome);
    return this.withTimeout(outcome, admission);
  }

  /** An answer of the store: the metering context, or the 429 (thrown). */
  private admitted(
    { req, estimate, ledgerPeriodKey, now }: Admission,
    result: ReserveResult,
  ): MeteringContext {
    const { provider } = req;
    if (!result.admitted) {
      this.stats.record(429);
      const refusal = limitExceeded(result.exceeded, provider, now);
      this.usageMetrics.decision('refused', provider, refusal.getResponse().code);
      throw refusal;
    }
    this.usageMetrics.decision('admitted', provider, 'ok');
    const shadow = result.shadow;
    if (shadow) {
      const code = USAGE_LIMIT_CODES[shadow.charge.metric];
      this.usageMetrics.decision('shadow_refused', provider, code);
      this.throttledLog.warn(
        `shadow:${shadow.charge.limitId}`,
        `shadow limit ${shadow.charge.limitId} would have refused a request (${code}); admitted, recorded on its ledger row`,
      );
    }
    return {
      reservation: result.reservation,
      provider,
      model: req.model,
      estimate,
      ledgerPeriodKey,
      startedAt: now,
      endpoint: req.endpoint,
      method: req.method,
      requestBytes: req.requestBytes,
      intercepted: false,
      settled: false,
      shadowRefused: shadow?.charge.limitId,
    };
  }

  /** Gives an admitted reservation back uncharged (the call never ran). */
  release(metering: MeteringContext): Promise<void> {
    if (metering.settled) return Promise.resolve();
    metering.settled = true;
    return Promise.resolve(this.store.release(metering.reservation)).catch(() => undefined);
  }

  private charges(plan: ResolvedPlan, req: AdmissionRequest, now: number) {
    const { provider } = req;
    const limits = this.options.catalog.limitsFor(plan.name, provider);
    const extractor = this.options.extractor;
    const estimate = req.estimate
      ? extractor.estimateFrom(provider, req.estimate, req.model)
      : extractor.estimate(provider, req.body, req.model);
    const book = this.options.priceBook;
    if (
      book.unknownModels === 'deny' &&
      typeof estimate.model === 'string' &&
      book.defaultModel(provider) !== undefined &&
      !book.isKnown(provider, estimate.model)
    ) {
      throw new UnknownModelException(provider, estimate.model);
    }
    // Priced when a limit counts cost, or when the estimate may be charged as it is (durable intent).
    const priced =
      this.options.durableIntent || limits.some((l) => l.metric === 'cost')
        ? book.price(provider, estimate.model ?? book.defaultModel(provider), estimate)
        : undefined;
    const cost = priced?.costMicros ?? 0;
    const tokens = estimate.inputTokens + estimate.outputTokens;
    // Limits an admin overrode for this user (most users have none).
    const overridden = this.overrides.of(req.userId);
    const charges: LimitCharge[] = limits.map((l) => {
      const w = this.periods.window(l.period, now, plan.anchorDay);
      return {
        limitId: l.limitId,
        scope: l.scope,
        metric: l.metric,
        period: l.period,
        periodKey: w.key,
        periodStart: w.start,
        periodEnd: w.end,
        max: overridden ? LimitOverrides.maxOf(overridden, l.limitId, l.max, now) : l.max,
        amount: l.metric === 'calls' ? 1 : l.metric === 'tokens' ? tokens : cost,
        shadowMax: l.shadowMax,
        shadowLimitId: l.shadowLimitId,
      };
    });
    return { charges, estimate, priced };
  }

  /**
   * Waits for the store until `enforcementTimeoutMs`, or, for an admission the store is still working for
   * then (`UsageStore.waitTimeoutMs`: its user's database opening, or in line behind a burst's statements),
   * until the store's longer timeout. One interval timer serves every
   * admission waiting (their deadlines expire in the order they were made), instead of a timer set and
   * cleared per request; a late admission is rejected within a fifth of the timeout after its deadline, once
   * the event loop has read what arrived meanwhile (`expireDue`).
   */
  private withTimeout(p: PromiseLike<ReserveResult>, admission: Admission): Promise<MeteringContext | null> {
    return new Promise((resolve, reject) => {
      const now = Date.now();
      const waiter: Waiter = {
        deadline: now + this.options.enforcementTimeoutMs,
        since: now,
        limit: Infinity,
        admission,
        resolve,
        reject,
        late: false,
        extended: false,
      };
      this.waiting.add(waiter);
      this.startTicker();
      p.then(
        (r) => this.answered(waiter, r),
        (e: unknown) => {
          if (waiter.late) return;
          this.stopWaiting(waiter);
          this.failed(waiter, e);
        },
      );
    });
  }

  /** The store's answer for a waiting admission: its metering context or refusal, or, when too late, released. */
  private answered(waiter: Waiter, r: ReserveResult): void {
    if (waiter.late) {
      // Answered after we gave up: give the reservation back, nobody will settle it.
      if (r.admitted) void Promise.resolve(this.store.release(r.reservation)).catch(() => undefined);
      return;
    }
    this.stopWaiting(waiter);
    try {
      waiter.resolve(this.admitted(waiter.admission, r));
    } catch (e) {
      waiter.reject(e);
    }
  }

  /** A waiting admission that failed or timed out: fail-open (`null`) or its 503. */
  private failed(waiter: Waiter, error: unknown): void {
    try {
      waiter.resolve(this.onFailure(error, waiter.admission.req.provider));
    } catch (e) {
      waiter.reject(e);
    }
  }

  private stopWaiting(waiter: Waiter): void {
    if (!(waiter.extended ? this.extended : this.waiting).delete(waiter)) this.due.delete(waiter);
  }

  private startTicker(): void {
    this.ticker ??= setInterval(
      () => this.expireWaiters(),
      Math.max(5, this.options.enforcementTimeoutMs / 5),
    );
  }

  /**
   * Admissions past their deadline: each the store is still working for (`waitTimeoutMs`: a first request
   * waiting for its user's database to open, or one in line behind a burst's statements) is looked at again
   * one enforcement timeout later, the store asked about the last two intervals (so that one that stalls
   * while a burst is in line fails it then, while one slow batch does not), up to its start plus the
   * store's longer timeout. The others are asked once more in this turn's check phase (`expireDue`), and get
   * their 503 only then: timers run before the event loop polls, so after the loop was busy (a burst of
   * requests being parsed) an answer that came in time may be waiting, unread, on a socket.
   */
  private expireWaiters(): void {
    const now = Date.now();
    // Extended ones first: they began earlier, so their limits come first (`extended` stays in deadline
    // order). One extended again goes to the end of `extended`, past every one expired now.
    for (const set of [this.extended, this.waiting]) {
      for (const w of set) {
        if (w.deadline > now) break; // the rest were made later
        set.delete(w);
        if (!this.extend(w, now)) this.due.add(w);
      }
    }
    // `due` is empty before this pass: the check phase after each pass takes it whole.
    if (this.due.size > 0) setImmediate(() => this.expireDue());
    if (this.waiting.size === 0 && this.extended.size === 0) {
      clearInterval(this.ticker);
      this.ticker = undefined;
    }
  }

  /** The admissions past their deadline that the store was not working for in the timers phase: asked again, after the poll. */
  private expireDue(): void {
    const due = this.due;
    this.due = new Set();
    const now = Date.now();
    for (const w of due) if (!this.extend(w, now)) this.expire(w);
    if (this.extended.size > 0) this.startTicker();
  }

  /**
   * Gives an admission past its deadline another enforcement timeout (at most up to its limit) while the
   * store is working for it; false when it is not, or past its limit. Deadlines set at one `now` are that
   * plus the same interval, capped by limits in the order the admissions began: `extended` stays in order.
   */
  private extend(w: Waiter, now: number): boolean {
    if (now >= w.limit) return false;
    const interval = this.options.enforcementTimeoutMs;
    const waitMs = this.store.waitTimeoutMs?.(w.admission.req.userId, w.since);
    if (waitMs === undefined || waitMs <= interval) return false;
    if (!w.extended) w.limit = w.since + waitMs;
    w.extended = true;
    w.since = Math.max(w.since, now - interval);
    w.deadline = Math.min(now + interval, w.limit);
    this.extended.add(w);
    return true;
  }

  private expire(waiter: Waiter): void {
    waiter.late = true;
    this.failed(waiter, new EnforcementTimeoutError('usage store did not answer in time'));
  }

  /** A failure to decide: counted by reason, then fail-open (`null`) or the 503. HTTP errors pass as they are. */
  private onFailure(error: unknown, provider: string): null {
    if (error instanceof UnknownModelException)
      this.usageMetrics.decision('refused', provider, UNKNOWN_MODEL_CODE);
    if (error instanceof HttpException) throw error;
    const reason: EnforcementFailureReason =
      error instanceof UsageStoreError
        ? error.reason
        : error instanceof PlanLookupError
          ? 'plan_lookup_failed'
          : error instanceof EnforcementTimeoutError
            ? 'database_session_unavailable'
            : 'unexpected_enforcement_error';
    this.metrics.recordFailure(reason, provider);
    if (this.options.emergencyFailOpen) {
      this.metrics.recordFailOpen(provider);
      this.usageMetrics.decision('fail_open', provider, reason);
      this.throttledLog.warn(
        'fail-open',
        `usage enforcement unavailable (${reason}); letting requests through because USAGE_LIMITS_EMERGENCY_FAIL_OPEN is on`,
      );
      return null;
    }
    const cause =
      reason === 'plan_lookup_failed'
        ? `the plan(userId) option failed or did not answer within planTimeoutMs`
        : 'the usage store could not decide in time';
    this.throttledLog.error(
      `failure:${reason}`,
      `usage enforcement unavailable (${reason}): ${cause}; answering 503`,
    );
    this.stats.record(503);
    this.usageMetrics.decision('unavailable', provider, reason);
    throw new EnforcementUnavailableException();
  }
}

/** The ledger row of an admitted request the process dies during: charged at its estimate (durable intent). */
function interruptedRow(
  requestId: string,
  req: AdmissionRequest,
  { estimate, priced }: { estimate: MeasuredUsage; priced: PricedUsage | undefined },
  periodKey: string,
  now: number,
): UsageEventRecord {
  return {
    requestId,
    userId: req.userId,
    provider: req.provider,
    model: estimate.model ?? null,
    endpoint: req.endpoint,
    method: req.method,
    statusCode: 0,
    inputTokens: estimate.inputTokens,
    outputTokens: estimate.outputTokens,
    cachedInputTokens: 0,
    cacheWriteTokens: 0,
    reasoningTokens: 0,
    costMicros: priced?.costMicros ?? 0,
    priceVersion: priced?.priceVersion ?? null,
    responseTimeMs: 0,
    requestBytes: req.requestBytes,
    responseBytes: 0,
    userAgent: null,
    ip: null,
    searches: estimate.searches,
    images: estimate.images,
    pages: estimate.pages,
    estimated: true,
    outcome: 'interrupted',
    shadowRefused: null,
    periodKey,
    occurredAt: now,
  };
}
