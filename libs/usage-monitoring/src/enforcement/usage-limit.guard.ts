import {
  HttpException,
  Inject,
  Injectable,
  Logger,
  UnauthorizedException,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { Metered, type MeteredOptions } from '../decorators/metered.decorator';
import { SkipMetering } from '../decorators/skip-metering.decorator';
import { RollingStats } from '../health/rolling-stats';
import { pathOf } from '../metering/request-path';
import { newRequestId } from '../metering/request-id';
import { PeriodClock } from '../plans/billing-period';
import { PlanLookupError } from '../plans/plan-lookup';
import type { ResolvedPlan } from '../plans/plan-resolver';
import type { PlanAssignment } from '../plans/plan.interface';
import { UsageStoreError } from '../storage/usage-store.error';
import type {
  LimitCharge,
  ReserveResult,
  UsageEventRecord,
  UsageStore,
} from '../storage/usage-store.interface';
import type { MeasuredUsage } from '../metering/usage-extractor';
import type { PricedUsage } from '../pricing/price-book';
import { MAX_USER_ID_LENGTH } from '../storage/sqlite/user-file-name';
import type { EnforcementFailureReason } from '../usage-monitoring.constants';
import { NORMALIZED_OPTIONS, RESERVATION_KEY, USAGE_STORE } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { UsageRequest } from '../usage-monitoring.options';
import {
  ENFORCEMENT_RETRY_AFTER_SECONDS,
  EnforcementUnavailableException,
} from './enforcement-unavailable.exception';
import { EnforcementMetrics } from './enforcement-metrics';
import type { MeteringContext } from './metering-context';
import { setHeaders } from './rate-limit-headers';
import { ThrottledLogger } from './throttled-logger';
import { UnknownModelException } from './unknown-model.exception';
import { limitExceeded, UsageLimitExceededException } from './usage-limit-exceeded.exception';

interface RouteMetering {
  skip: boolean;
  metered: MeteredOptions | undefined;
}

type HttpRequest = UsageRequest & {
  originalUrl?: string;
  url?: string;
  body?: unknown;
  [RESERVATION_KEY]?: MeteringContext;
};

class EnforcementTimeoutError extends Error {}

/** Headers that carry a client's credentials: their presence without a user hints at the guard order. */
const CREDENTIAL_HEADERS = ['authorization', 'x-api-key', 'x-goog-api-key', 'cookie'];

const isThenable = <T>(v: unknown): v is PromiseLike<T> =>
  typeof v === 'object' && v !== null && typeof (v as PromiseLike<T>).then === 'function';

/**
 * Decides before the handler runs: resolves provider and user, estimates the request, and reserves every
 * limit that applies atomically (all or none). Over a limit → 429; store unavailable or too slow → 503
 * (unless the emergency fail-open switch is on). Unmetered routes return after one cached lookup.
 *
 * Subclass it to change a step: `getUserId`, `getProvider`, `throwLimitExceeded`, `throwUnavailable`.
 */
@Injectable()
export class UsageLimitGuard implements CanActivate {
  private readonly logger = new Logger(UsageLimitGuard.name);
  private readonly throttledLog = new ThrottledLogger(this.logger);
  private readonly routes = new WeakMap<object, WeakMap<object, RouteMetering>>();
  private readonly periods = new PeriodClock();
  private hintedAuthenticationOrder = false;

  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly reflector: Reflector,
    private readonly metrics: EnforcementMetrics,
    private readonly stats: RollingStats,
  ) {}

  /** Passes unmetered requests; reserves for metered ones, or throws the 401, 429 or 503. */
  canActivate(context: ExecutionContext): boolean | Promise<boolean> {
    if (context.getType() !== 'http') return true;
    const route = this.route(context);
    if (route.skip) return true;
    const request = context.switchToHttp().getRequest<HttpRequest>();
    const provider = this.getProvider(request, route.metered);
    if (provider === undefined) return true;
    // Bound twice (globally and on the controller): the first binding has reserved for this request.
    if (request[RESERVATION_KEY]) return true;
    return this.enforce(context, request, provider, route.metered?.model);
  }

  /** The provider of a request: `@Metered` wins, else detection over path and User-Agent. */
  protected getProvider(request: UsageRequest, metered: MeteredOptions | undefined): string | undefined {
    if (metered) return metered.provider;
    const detector = this.options.detector;
    if (!detector) return undefined;
    const ua = request.headers['user-agent'];
    return detector.detect(pathOf(request as HttpRequest), typeof ua === 'string' ? ua : undefined);
  }

  /**
   * The user to charge: the authenticated principal (through the `userId` option), else the one trusted
   * header when configured. Client-supplied ids are never consulted otherwise.
   */
  protected getUserId(request: UsageRequest): string | undefined {
    let id = this.options.userId(request);
    if (id === undefined && this.options.trustedUserHeader) {
      const h = request.headers[this.options.trustedUserHeader];
      id = typeof h === 'string' ? h : undefined;
    }
    if (typeof id !== 'string' || id === '' || id.length > MAX_USER_ID_LENGTH) return undefined;
    return id;
  }

  /** Refuses a request over a limit: sets the exception's rate-limit headers, then throws the 429. */
  protected throwLimitExceeded(context: ExecutionContext, exception: UsageLimitExceededException): never {
    setHeaders(context.switchToHttp().getResponse(), exception.headers);
    throw exception;
  }

  /** Refuses a request the store could not decide in time: `Retry-After`, then the 503. */
  protected throwUnavailable(context: ExecutionContext): never {
    setHeaders(context.switchToHttp().getResponse(), {
      'Retry-After': String(ENFORCEMENT_RETRY_AFTER_SECONDS),
    });
    throw new EnforcementUnavailableException();
  }

  private enforce(
    context: ExecutionContext,
    request: HttpRequest,
    provider: string,
    model: string | undefined,
  ): boolean | Promise<boolean> {
    let userId = this.getUserId(request);
    if (userId === undefined) {
      if (this.options.anonymous !== 'allow') {
        this.hintAuthenticationOrder(request);
        throw new UnauthorizedException();
      }
      userId = this.options.anonymousUserId;
    }
    const uid = userId;
    const now = this.options.clock();
    let ledgerPeriodKey = '';
    const reserveWith = (assignment: PlanAssignment | undefined): ReserveResult | Promise<ReserveResult> => {
      const plan = this.options.plans.resolve(assignment);
      const built = this.charges(plan, provider, request.body, model, now);
      ledgerPeriodKey = this.periods.window('month', now, plan.anchorDay).key;
      const requestId = newRequestId();
      return this.store.reserve({
        requestId,
        userId: uid,
        provider,
        charges: built.charges,
        now,
        interrupted: this.options.durableIntent
          ? interruptedRow(requestId, uid, provider, request, built, ledgerPeriodKey, now)
          : undefined,
      });
    };
    const admit = (result: ReserveResult): boolean => {
      if (!result.admitted) {
        this.stats.record(429);
        return this.throwLimitExceeded(context, limitExceeded(result.exceeded, provider, now));
      }
      const metering: MeteringContext = {
        reservation: result.reservation,
        provider,
        model,
        ledgerPeriodKey,
        startedAt: now,
        intercepted: false,
        settled: false,
      };
      request[RESERVATION_KEY] = metering;
      this.releaseIfNeverSettled(context, metering);
      return true;
    };
    // The plan lookup (cached, with its own deadline), then the reservation within enforcementTimeoutMs.
    const decide = (assignment: PlanAssignment | undefined): boolean | Promise<boolean> => {
      let outcome: ReserveResult | PromiseLike<ReserveResult>;
      try {
        outcome = reserveWith(assignment);
      } catch (e) {
        return this.onFailure(context, e, provider);
      }
      if (!isThenable<ReserveResult>(outcome)) return admit(outcome);
      return this.withTimeout(outcome).then(admit, (e) => this.onFailure(context, e, provider));
    };
    let assignment: PlanAssignment | undefined | Promise<PlanAssignment | undefined>;
    try {
      assignment = this.options.resolvePlan(uid);
    } catch (e) {
      return this.onFailure(context, e, provider);
    }
    if (!isThenable<PlanAssignment | undefined>(assignment)) return decide(assignment);
    return Promise.resolve(assignment).then(decide, (e) => this.onFailure(context, e, provider));
  }

  /**
   * A request that carries credentials but reaches the guard without a user most likely met the guard
   * before the app's authentication ran (a global guard registered first): say so, once.
   */
  private hintAuthenticationOrder(request: UsageRequest): void {
    if (this.hintedAuthenticationOrder || request.user !== undefined) return;
    const credentials = CREDENTIAL_HEADERS.filter((h) => request.headers[h] !== undefined);
    if (!credentials.length) return;
    this.hintedAuthenticationOrder = true;
    this.logger.warn(
      `a metered request carries credentials (${credentials.join(', ')}) but no authenticated user: UsageLimitGuard ` +
        'ran before your authentication. Authenticate in middleware, or register your authentication guard ' +
        'before UsageLimitGuard (global guards run in the order their APP_GUARD providers are registered, and ' +
        'before controller guards); it must set request.user (or answer the userId option).',
    );
  }

  private charges(
    plan: ResolvedPlan,
    provider: string,
    body: unknown,
    model: string | undefined,
    now: number,
  ) {
    const limits = this.options.catalog.limitsFor(plan.name, provider);
    const estimate = this.options.extractor.estimate(provider, body, model);
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
        max: l.max,
        amount: l.metric === 'calls' ? 1 : l.metric === 'tokens' ? tokens : cost,
      };
    });
    return { charges, estimate, priced };
  }

  /**
   * Safety net: when the response ends and no interceptor settled the reservation (the interceptor is not
   * bound, or a later guard refused), give the reservation back so it cannot hold quota forever.
   */
  private releaseIfNeverSettled(context: ExecutionContext, metering: MeteringContext): void {
    const res = context.switchToHttp().getResponse<{ raw?: NodeJS.EventEmitter } & NodeJS.EventEmitter>();
    const emitter = res.raw ?? res;
    if (typeof emitter?.once !== 'function') return;
    emitter.once('close', () => {
      if (metering.settled || metering.intercepted) return;
      metering.settled = true;
      void Promise.resolve(this.store.release(metering.reservation)).catch(() => undefined);
      this.throttledLog.warn(
        'unsettled',
        'a metered request ended without MeteringInterceptor settling it; its reservation was released. Bind MeteringInterceptor wherever UsageLimitGuard runs',
      );
    });
  }

  private withTimeout(p: PromiseLike<ReserveResult>): Promise<ReserveResult> {
    return new Promise((resolve, reject) => {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        reject(new EnforcementTimeoutError('usage store did not answer in time'));
      }, this.options.enforcementTimeoutMs);
      p.then(
        (r) => {
          if (!late) {
            clearTimeout(timer);
            resolve(r);
          } else if (r.admitted) {
            // Answered after we gave up: give the reservation back, nobody will settle it.
            void Promise.resolve(this.store.release(r.reservation)).catch(() => undefined);
          }
        },
        (e: unknown) => {
          if (!late) {
            clearTimeout(timer);
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        },
      );
    });
  }

  private onFailure(context: ExecutionContext, error: unknown, provider: string): boolean {
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
      this.throttledLog.warn(
        'fail-open',
        `usage enforcement unavailable (${reason}); letting requests through because USAGE_LIMITS_EMERGENCY_FAIL_OPEN is on`,
      );
      return true;
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
    return this.throwUnavailable(context);
  }

  private route(context: ExecutionContext): RouteMetering {
    const handler = context.getHandler();
    const cls = context.getClass();
    let byClass = this.routes.get(handler);
    if (!byClass) this.routes.set(handler, (byClass = new WeakMap()));
    let hit = byClass.get(cls);
    if (!hit) {
      const targets = [handler, cls];
      hit = {
        skip: this.reflector.getAllAndOverride(SkipMetering, targets) === true,
        metered: this.reflector.getAllAndOverride(Metered, targets),
      };
      byClass.set(cls, hit);
    }
    return hit;
  }
}

/** The ledger row of an admitted request the process dies during: charged at its estimate (durable intent). */
function interruptedRow(
  requestId: string,
  userId: string,
  provider: string,
  request: HttpRequest,
  { estimate, priced }: { estimate: MeasuredUsage; priced: PricedUsage | undefined },
  periodKey: string,
  now: number,
): UsageEventRecord {
  return {
    requestId,
    userId,
    provider,
    model: estimate.model ?? null,
    endpoint: pathOf(request).slice(0, 512),
    method: typeof request.method === 'string' ? request.method : 'GET',
    statusCode: 0,
    inputTokens: estimate.inputTokens,
    outputTokens: estimate.outputTokens,
    cachedInputTokens: 0,
    cacheWriteTokens: 0,
    reasoningTokens: 0,
    costMicros: priced?.costMicros ?? 0,
    priceVersion: priced?.priceVersion ?? null,
    responseTimeMs: 0,
    requestBytes: Number(request.headers['content-length']) || 0,
    responseBytes: 0,
    userAgent: null,
    ip: null,
    searches: estimate.searches,
    images: estimate.images,
    pages: estimate.pages,
    estimated: true,
    outcome: 'interrupted',
    periodKey,
    occurredAt: now,
  };
}
