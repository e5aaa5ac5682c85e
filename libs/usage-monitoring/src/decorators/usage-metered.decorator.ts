import { ForbiddenException, Inject, type CallHandler } from '@nestjs/common';
import { RESPONSE_PASSTHROUGH_METADATA, ROUTE_ARGS_METADATA, SSE_METADATA } from '@nestjs/common/constants';
import { RouteParamtypes } from '@nestjs/common/enums/route-paramtypes.enum';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host';
import { from, isObservable, lastValueFrom, type Observable } from 'rxjs';
import { UsageLimitGuard } from '../enforcement/usage-limit.guard';
import { MeteringInterceptor } from '../metering/metering.interceptor';
import { Metered, type MeteredOptions } from './metered.decorator';

const GUARD = Symbol('usage-monitoring:guard');
const INTERCEPTOR = Symbol('usage-monitoring:interceptor');

interface Bound {
  [GUARD]?: UsageLimitGuard;
  [INTERCEPTOR]?: MeteringInterceptor;
}

type Handler = (...args: unknown[]) => unknown;

/**
 * The opt-in low-overhead binding: `UsageLimitGuard` and `MeteringInterceptor` (the same instances, the
 * same code, the same responses) run inside the handler instead of through Nest's guard and interceptor
 * pipelines, which cost more per request than the metering itself. Put it on a route handler in place of
 * `@UseGuards(UsageLimitGuard)` + `@UseInterceptors(MeteringInterceptor)`; `options` are `@Metered`'s
 * (without them, a `@Metered` on the handler or class applies, else the provider is detected from the
 * path). The controller's module must see `UsageMonitoringModule`'s exports (import it, or `isGlobal`).
 *
 * Differences from the default binding: the checks run after Nest's own guards, interceptors and pipes
 * (so a `ValidationPipe` rejects a bad body before a reservation, and your interceptors see the 429/503
 * as the handler's error); everything else is unchanged.
 *
 * @example
 * ```ts
 * @Post('chat/completions')
 * @UsageMetered({ provider: 'openai' })
 * chat(@Body() body: ChatRequest) {}
 * ```
 */
export function UsageMetered(options?: MeteredOptions): MethodDecorator {
  return (target, key, descriptor) => {
    const original = descriptor.value as unknown as Handler;
    if (typeof original !== 'function') throw new TypeError('@UsageMetered() decorates a method');
    const ctor = target.constructor as new (...a: never[]) => unknown;
    Inject(UsageLimitGuard)(target, GUARD);
    Inject(MeteringInterceptor)(target, INTERCEPTOR);

    // The request and response (passthrough: Nest still sends the result) as two extra arguments.
    const params: Record<string, { index: number }> =
      Reflect.getMetadata(ROUTE_ARGS_METADATA, ctor, key) ?? {};
    const at = Math.max(original.length, ...Object.values(params).map((p) => p.index + 1));
    Reflect.defineMetadata(
      ROUTE_ARGS_METADATA,
      {
        ...params,
        [`${RouteParamtypes.REQUEST}:${at}`]: { index: at, data: undefined, pipes: [] },
        [`${RouteParamtypes.RESPONSE}:${at + 1}`]: { index: at + 1, data: undefined, pipes: [] },
      },
      ctor,
      key,
    );
    Reflect.defineMetadata(RESPONSE_PASSTHROUGH_METADATA, true, ctor, key);

    /** Read at the first call, once every decorator (also `@Sse()` above this one) has been applied. */
    let sse: boolean | undefined;
    const wrapped = function (this: Bound, ...args: unknown[]): unknown {
      // Injected by Nest (a module that cannot see them fails at start-up, naming UsageLimitGuard).
      const guard = this[GUARD]!;
      const interceptor = this[INTERCEPTOR]!;
      const request = args[at];
      const response = args[at + 1];
      const own = args.slice(0, at);
      const context = new ExecutionContextHost([request, response, undefined], ctor as never, wrapped);
      context.setType('http');
      const next: CallHandler = {
        handle: (): Observable<unknown> => {
          const result = original.apply(this, own);
          return isObservable(result) ? result : from(Promise.resolve(result));
        },
      };
      // An Observable returned by a handler is torn down by Nest when the client leaves; a provider call
      // that still completes must be metered whole, so (except for @Sse) the result goes back as a Promise.
      sse ??= Reflect.getMetadata(SSE_METADATA, wrapped) === true;
      const run = () => {
        const out = interceptor.intercept(context, next);
        return sse ? out : lastValueFrom(out, { defaultValue: undefined });
      };
      const admitted = guard.canActivate(context);
      if (admitted === true) return run();
      if (admitted === false) throw new ForbiddenException();
      return admitted.then((ok) => {
        if (!ok) throw new ForbiddenException();
        return run();
      });
    };
    // Metadata other decorators left on the handler (route, status code, @Metered, @Sse) moves with it.
    for (const k of Reflect.getMetadataKeys(original)) {
      Reflect.defineMetadata(k, Reflect.getMetadata(k, original), wrapped);
    }
    Object.defineProperty(wrapped, 'name', { value: original.name });
    descriptor.value = wrapped as never;
    if (options) Metered(options)(target, key, descriptor);
    return descriptor;
  };
}
