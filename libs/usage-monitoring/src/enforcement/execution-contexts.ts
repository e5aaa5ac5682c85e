import type { ExecutionContext, HttpException } from '@nestjs/common';
import { pathOf } from '../metering/request-path';
import type { UsageRequest } from '../usage-monitoring.options';
import type { MeteringContext } from './metering-context';

/**
 * What `getRequestResponse(context)` answers: the request whose principal identifies the user (handed to the
 * `userId` option) and the response the guard's headers go to, when the context has one.
 */
export interface RequestResponse {
  req: UsageRequest;
  res?: unknown;
}

interface GraphQlInfo {
  fieldName?: string;
  parentType?: { name?: string };
  operation?: { operation?: string };
}

/**
 * The request and response of the contexts the library meters without help: HTTP (Express, Fastify),
 * GraphQL (`@nestjs/graphql` puts `req` and `res` in the resolver context) and WebSocket gateways (the
 * socket client stands for the request: the app's authentication puts the principal on it). `undefined`
 * for any other context (microservices, unknown types).
 */
export function defaultRequestResponse(context: ExecutionContext): RequestResponse | undefined {
  switch (context.getType<string>()) {
    case 'http':
      // What `switchToHttp()` reads (request and response are the first two arguments), without the host
      // object it makes on every call: this runs twice per request.
      return { req: context.getArgByIndex<UsageRequest>(0), res: context.getArgByIndex<unknown>(1) };
    case 'graphql': {
      const ctx = context.getArgByIndex<{ req?: UsageRequest; request?: UsageRequest; res?: unknown }>(2);
      const req = ctx?.req ?? ctx?.request;
      if (!req) return undefined;
      return { req, res: ctx?.res ?? (req as { res?: unknown }).res };
    }
    case 'ws': {
      const client = context.switchToWs().getClient<UsageRequest>();
      return client ? { req: client, res: client } : undefined;
    }
    default:
      return undefined;
  }
}

/** What the call's estimate reads: the HTTP body, the resolver's arguments, the message's data. */
export function inputOf(context: ExecutionContext, req: UsageRequest): unknown {
  switch (context.getType<string>()) {
    case 'http':
      return req.body;
    case 'graphql':
      return context.getArgByIndex(1);
    case 'ws':
      return context.switchToWs().getData();
    default:
      return req.body ?? context.getArgByIndex(0);
  }
}

/** The ledger row's endpoint and method for a call in this context. */
export function endpointOf(
  context: ExecutionContext,
  req: UsageRequest,
): { endpoint: string; method: string } {
  const type = context.getType<string>();
  if (type === 'http') {
    return {
      endpoint: pathOf(req as { originalUrl?: string; url?: string }).slice(0, 512),
      method: typeof req.method === 'string' ? req.method : 'GET',
    };
  }
  if (type === 'graphql') {
    const info = context.getArgByIndex<GraphQlInfo | undefined>(3);
    return {
      endpoint: `graphql:${info?.parentType?.name ?? '?'}.${info?.fieldName ?? context.getHandler().name}`,
      method: (info?.operation?.operation ?? 'query').toUpperCase(),
    };
  }
  if (type === 'ws') {
    const pattern = context.switchToWs().getPattern?.();
    return {
      endpoint: `ws:${typeof pattern === 'string' ? pattern : context.getHandler().name}`,
      method: 'WS',
    };
  }
  return { endpoint: `${type}:${handlerName(context)}`, method: type.toUpperCase() };
}

export function handlerName(context: ExecutionContext): string {
  return `${context.getClass().name}.${context.getHandler().name}`;
}

/** Request size from `Content-Length` (HTTP only). */
export function requestBytesOf(req: UsageRequest): number {
  return Number(req.headers?.['content-length']) || 0;
}

/**
 * Where the guard leaves a call's reservation for the interceptor: keyed by the HTTP request (one handler per
 * request), else by the call's argument list, which Nest hands to the guard and the interceptor of one
 * resolver or gateway call alike (one GraphQL request may call several metered resolvers). Not a property
 * of the request: adding one to Express's request cost ~1.4 KB of garbage per request (V8 sampling heap
 * profile of the bench server), the map entry ~0.2 KB.
 */
const reservations = new WeakMap<object, MeteringContext>();

/** @internal */
export function reservationOf(context: ExecutionContext, req: UsageRequest): MeteringContext | undefined {
  return reservations.get(context.getType() === 'http' ? req : context.getArgs());
}

/** @internal */
export function keepReservation(
  context: ExecutionContext,
  req: UsageRequest,
  metering: MeteringContext,
): void {
  reservations.set(context.getType() === 'http' ? req : context.getArgs(), metering);
}

/**
 * A refusal in the shape of its context: as it is over HTTP; in a gateway a `WsException` carrying its body
 * (what the client's `exception` event receives; `@nestjs/websockets` is present wherever a gateway runs); in
 * GraphQL with the body as the error's `extensions` (GraphQL copies them onto the error it answers).
 */
export function inContext(context: ExecutionContext, exception: HttpException): Error {
  const type = context.getType<string>();
  if (type === 'ws') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { WsException } = require('@nestjs/websockets') as typeof import('@nestjs/websockets');
    return new WsException(exception.getResponse());
  }
  if (type === 'graphql') withExtensions(exception);
  return exception;
}

/** Gives an exception its body as GraphQL error `extensions` (`code` first). */
export function withExtensions(exception: HttpException): HttpException {
  const body = exception.getResponse();
  if (typeof body === 'object' && body !== null)
    Object.defineProperty(exception, 'extensions', { value: { ...body }, configurable: true });
  return exception;
}
