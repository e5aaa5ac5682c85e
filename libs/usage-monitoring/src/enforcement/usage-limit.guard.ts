import {
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
import { pathOf } from '../metering/request-path';
import { MAX_USER_ID_LENGTH } from '../storage/sqlite/user-file-name';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import {
  defaultRequestResponse,
  inContext,
  endpointOf,
  handlerName,
  inputOf,
  keepReservation,
  requestBytesOf,
  reservationOf,
  type RequestResponse,
} from './execution-contexts';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { UsageRequest } from '../usage-monitoring.options';
import {
  ENFORCEMENT_RETRY_AFTER_SECONDS,
  EnforcementUnavailableException,
} from './enforcement-unavailable.exception';
import { checkFigures, type UsageEstimate } from '../metering/usage-figures';
import type { MeteringContext } from './metering-context';
import { setHeaders } from './rate-limit-headers';
import { ThrottledLogger } from './throttled-logger';
import { UsageEnforcer } from './usage-enforcer';
import { UsageLimitExceededException } from './usage-limit-exceeded.exception';

interface RouteMetering {
  skip: boolean;
  metered: MeteredOptions | undefined;
}

type HttpRequest = UsageRequest & {
  originalUrl?: string;
  url?: string;
  body?: unknown;
};

/** Headers that carry a client's credentials: their presence without a user hints at the guard order. */
const CREDENTIAL_HEADERS = ['authorization', 'x-api-key', 'x-goog-api-key', 'cookie'];

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
  private hintedAuthenticationOrder = false;

  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    private readonly reflector: Reflector,
    private readonly enforcer: UsageEnforcer,
  ) {}

  /** Passes unmetered calls; reserves for metered ones, or throws the 401, 429 or 503. */
  canActivate(context: ExecutionContext): boolean | Promise<boolean> {
    const route = this.route(context);
    if (route.skip) return true;
    const rr = this.getRequestResponse(context);
    if (!rr) {
      if (route.metered) throw this.unmeterable(context);
      return true;
    }
    const request = rr.req as HttpRequest;
    // Provider detection reads the HTTP path; elsewhere only `@Metered` meters.
    const provider =
      route.metered || context.getType() === 'http' ? this.getProvider(request, route.metered) : undefined;
    if (provider === undefined) return true;
    // Bound twice (globally and on the controller): the first binding has reserved for this call.
    if (reservationOf(context, request)) return true;
    return this.enforce(context, request, rr.res, provider, route.metered);
  }

  /**
   * The request (whose principal the `userId` option reads) and response of a call. HTTP, GraphQL
   * (`req`/`res` of the resolver context) and WebSocket (the socket client) are understood; override it for
   * another context, or another GraphQL context shape. `undefined`: the context cannot be metered, and a
   * `@Metered` handler in it is refused.
   */
  protected getRequestResponse(context: ExecutionContext): RequestResponse | undefined {
    return defaultRequestResponse(context);
  }

  /** The provider of a request: `@Metered` wins, else detection over path and User-Agent. */
  protected getProvider(request: UsageRequest, metered: MeteredOptions | undefined): string | undefined {
    if (metered) return metered.provider;
    const detector = this.options.detector;
    if (!detector) return undefined;
    const ua = request.headers?.['user-agent'];
    return detector.detect(pathOf(request as HttpRequest), typeof ua === 'string' ? ua : undefined);
  }

  /**
   * The user to charge: the authenticated principal (through the `userId` option), else the one trusted
   * header when configured. Client-supplied ids are never consulted otherwise.
   */
  protected getUserId(request: UsageRequest): string | undefined {
    let id = this.options.userId(request);
    if (id === undefined && this.options.trustedUserHeader) {
      const h = request.headers?.[this.options.trustedUserHeader];
      id = typeof h === 'string' ? h : undefined;
    }
    if (typeof id !== 'string' || id === '' || id.length > MAX_USER_ID_LENGTH) return undefined;
    return id;
  }

  /**
   * Refuses a call over a limit: over HTTP sets the exception's rate-limit headers, then throws the 429; in
   * a gateway throws a `WsException` carrying the 429 body (what the client's `exception` event receives);
   * in GraphQL throws the exception for the driver to format.
   */
  protected throwLimitExceeded(context: ExecutionContext, exception: UsageLimitExceededException): never {
    if (context.getType() === 'http') setHeaders(this.getRequestResponse(context)?.res, exception.headers);
    throw inContext(context, exception);
  }

  /** Refuses a call the store could not decide in time: `Retry-After`, then the 503. */
  protected throwUnavailable(context: ExecutionContext): never {
    if (context.getType() === 'http')
      setHeaders(this.getRequestResponse(context)?.res, {
        'Retry-After': String(ENFORCEMENT_RETRY_AFTER_SECONDS),
      });
    throw inContext(context, new EnforcementUnavailableException());
  }

  /** A `@Metered` handler in a context without a request: refused, with what to do about it. */
  private unmeterable(context: ExecutionContext): Error {
    return new Error(
      `UsageLimitGuard cannot meter ${handlerName(context)} in a '${context.getType()}' context, so this ` +
        '@Metered handler is refused rather than run unmetered. Override getRequestResponse(context) in a ' +
        'subclass of UsageLimitGuard and MeteringInterceptor to return { req } for this context, or meter the ' +
        'provider call inside the handler with UsageMeter.run().',
    );
  }

  private enforce(
    context: ExecutionContext,
    request: HttpRequest,
    response: unknown,
    provider: string,
    metered: MeteredOptions | undefined,
  ): boolean | Promise<boolean> {
    let userId = this.getUserId(request);
    if (userId === undefined) {
      if (this.options.anonymous !== 'allow') {
        this.hintAuthenticationOrder(request);
        throw inContext(context, new UnauthorizedException());
      }
      userId = this.options.anonymousUserId;
    }
    let admission: MeteringContext | null | Promise<MeteringContext | null>;
    try {
      const input = inputOf(context, request);
      const { endpoint, method } = endpointOf(context, request);
      admission = this.enforcer.admit({
        userId,
        provider,
        model: metered?.model,
        body: input,
        estimate: metered?.estimate ? this.statedEstimate(context, metered, request, input) : undefined,
        endpoint,
        method,
        requestBytes: requestBytesOf(request),
      });
    } catch (e) {
      return this.refuse(context, e);
    }
    if (!(admission instanceof Promise)) return this.admitted(context, request, response, admission, metered);
    return admission.then(
      (a) => this.admitted(context, request, response, a, metered),
      (e) => this.refuse(context, e),
    );
  }

  /** Hands the reservation to the interceptor (none when enforcement failed open). */
  /** `@Metered({ estimate })`'s answer, checked: a negative or fractional figure would lower the reservation. */
  private statedEstimate(
    context: ExecutionContext,
    metered: MeteredOptions,
    request: HttpRequest,
    input: unknown,
  ): UsageEstimate {
    const estimate = metered.estimate!(request, input);
    checkFigures(estimate ?? {}, `@Metered estimate of ${handlerName(context)}`);
    return estimate;
  }

  private admitted(
    context: ExecutionContext,
    request: HttpRequest,
    response: unknown,
    metering: MeteringContext | null,
    metered: MeteredOptions | undefined,
  ): true {
    if (metering) {
      metering.route = metered;
      keepReservation(context, request, metering);
      this.releaseIfNeverSettled(context, response, metering);
    }
    return true;
  }

  private refuse(context: ExecutionContext, error: unknown): never {
    if (error instanceof UsageLimitExceededException) return this.throwLimitExceeded(context, error);
    if (error instanceof EnforcementUnavailableException) return this.throwUnavailable(context);
    throw error;
  }

  /**
   * A request that carries credentials but reaches the guard without a user most likely met the guard
   * before the app's authentication ran (a global guard registered first): say so, once.
   */
  private hintAuthenticationOrder(request: UsageRequest): void {
    if (this.hintedAuthenticationOrder || request.user !== undefined) return;
    const credentials = CREDENTIAL_HEADERS.filter((h) => request.headers?.[h] !== undefined);
    if (!credentials.length) return;
    this.hintedAuthenticationOrder = true;
    this.logger.warn(
      `a metered request carries credentials (${credentials.join(', ')}) but no authenticated user: UsageLimitGuard ` +
        'ran before your authentication. Authenticate in middleware, or register your authentication guard ' +
        'before UsageLimitGuard (global guards run in the order their APP_GUARD providers are registered, and ' +
        'before controller guards); it must set request.user (or answer the userId option).',
    );
  }

  /**
   * Safety net: when the response ends and no interceptor settled the reservation (the interceptor is not
   * bound, or a later guard refused), give the reservation back so it cannot hold quota forever.
   */
  private releaseIfNeverSettled(
    context: ExecutionContext,
    response: unknown,
    metering: MeteringContext,
  ): void {
    if (context.getType() !== 'http') return;
    const res = response as ({ raw?: NodeJS.EventEmitter } & NodeJS.EventEmitter) | undefined;
    const emitter = res?.raw ?? res;
    if (typeof emitter?.once !== 'function') return;
    emitter.once('close', () => {
      if (metering.settled || metering.intercepted) return;
      void this.enforcer.release(metering);
      this.throttledLog.warn(
        'unsettled',
        'a metered request ended without MeteringInterceptor settling it; its reservation was released. Bind MeteringInterceptor wherever UsageLimitGuard runs',
      );
    });
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
