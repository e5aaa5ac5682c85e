import { Catch, type ArgumentsHost } from '@nestjs/common';
import { BaseExceptionFilter } from '@nestjs/core';
import { throwError, type Observable } from 'rxjs';
import {
  ENFORCEMENT_RETRY_AFTER_SECONDS,
  EnforcementUnavailableException,
} from './enforcement-unavailable.exception';
import { withExtensions } from './execution-contexts';
import { setHeaders } from './rate-limit-headers';
import { UsageLimitExceededException } from './usage-limit-exceeded.exception';

/**
 * Gives a refusal thrown outside the guard (by `UsageMeter` in a handler or a service) the same answer as the
 * guard's: over HTTP the 429's rate-limit headers (or the 503's `Retry-After`) on Nest's usual JSON body; in a
 * microservice the body as the RPC error; in GraphQL the body as the error's `extensions`. Registered globally
 * by the module for these two exceptions only; a filter of the app's that catches them first wins.
 * @internal
 */
@Catch(UsageLimitExceededException, EnforcementUnavailableException)
export class UsageExceptionFilter extends BaseExceptionFilter {
  override catch(
    exception: UsageLimitExceededException | EnforcementUnavailableException,
    host: ArgumentsHost,
  ): void | Observable<never> {
    switch (host.getType<string>()) {
      case 'http': {
        const headers =
          exception instanceof UsageLimitExceededException
            ? exception.headers
            : { 'Retry-After': String(ENFORCEMENT_RETRY_AFTER_SECONDS) };
        setHeaders(host.switchToHttp().getResponse(), { ...headers });
        return super.catch(exception, host);
      }
      case 'rpc':
        return throwError(() => exception.getResponse());
      case 'graphql':
        throw withExtensions(exception);
      default:
        throw exception;
    }
  }
}
