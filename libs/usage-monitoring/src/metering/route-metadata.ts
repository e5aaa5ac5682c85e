import { Get, HttpCode, Sse } from '@nestjs/common';

/** What the interceptor needs to know of a route handler besides its result. */
export interface RouteInfo {
  /** Declared with `@Sse()`: the result is a stream of events, not one value. */
  sse: boolean;
  /** The status code of `@HttpCode()`, when declared. */
  httpCode: number | undefined;
}

/**
 * The metadata keys `@Sse()` and `@HttpCode()` write. Nest exports the decorators but keeps their keys in
 * an internal module (its path and exports differ between majors), so the keys are learnt once, by
 * applying the public decorators to a probe method.
 */
const SSE_KEYS = keysWrittenBy(Sse()).filter((key) => !keysWrittenBy(Get()).includes(key));
const HTTP_CODE_KEYS = keysWrittenBy(HttpCode(299));

function keysWrittenBy(decorator: MethodDecorator): unknown[] {
  const probe = { handler: () => undefined };
  const descriptor = Object.getOwnPropertyDescriptor(probe, 'handler')!;
  decorator(probe, 'handler', descriptor);
  return Reflect.getMetadataKeys(descriptor.value as object);
}

/** Reads a handler's route metadata (callers cache it per handler). */
export function routeInfoOf(handler: object): RouteInfo {
  const httpCode = HTTP_CODE_KEYS.map((key) => Reflect.getMetadata(key, handler) as unknown).find(
    (value) => typeof value === 'number',
  );
  return {
    sse: SSE_KEYS.some((key) => Reflect.getMetadata(key, handler) === true),
    httpCode,
  };
}
