import {
  Logger,
  StreamableFile,
  Inject,
  Injectable,
  type CallHandler,
  type ExecutionContext,
  type NestInterceptor,
} from '@nestjs/common';
import { Readable, Transform } from 'node:stream';
import { createParser } from 'eventsource-parser';
import { Observable, tap } from 'rxjs';
import { EnforcementMetrics } from '../enforcement/enforcement-metrics';
import type { MeteringContext } from '../enforcement/metering-context';
import type { UsageEventRecord, UsageStore } from '../storage/usage-store.interface';
import {
  defaultRequestResponse,
  handlerName,
  inputOf,
  reservationOf,
  type RequestResponse,
} from '../enforcement/execution-contexts';
import { NORMALIZED_OPTIONS, USAGE_STORE } from '../usage-monitoring.internal-constants';
import { jsonByteLength } from './json-byte-length';
import { meterStream } from './metered-stream';
import { checkFigures, isUsageFigures } from './usage-figures';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { UsageRequest } from '../usage-monitoring.options';
import { newRequestId } from './request-id';
import { pathOf } from './request-path';
import { routeInfoOf, type RouteInfo } from './route-metadata';
import { StreamUsage } from './stream-usage';
import { statusOf, UsageSettler, ZERO_USAGE } from './usage-settler';
import type { MeasuredUsage } from './usage-extractor';

type HttpRequest = UsageRequest & {
  method?: string;
  originalUrl?: string;
  url?: string;
  ip?: string;
  body?: unknown;
};

type Outcome = UsageEventRecord['outcome'];

/**
 * Settles what the guard reserved, after the handler: reads the provider's own usage from the response
 * (estimated and flagged where missing), prices it, and appends the ledger row. The response is released
 * once that row has committed, or at once when the request was admitted with a durable intent (its charge
 * at the estimate committed before its handler ran, so a crash before the row commits still charges it);
 * the handler's result and errors pass through unchanged, and a tracking failure never fails the request.
 * Routes the guard did not meter pass straight through.
 */
@Injectable()
export class MeteringInterceptor implements NestInterceptor {
  private readonly routes = new WeakMap<object, RouteInfo>();
  private readonly warnedRoutes = new WeakSet<object>();
  private readonly logger = new Logger(MeteringInterceptor.name);

  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly metrics: EnforcementMetrics,
    private readonly settler: UsageSettler,
  ) {}

  /** Settles a metered call after its handler; passes anything else through. */
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const rr = this.getRequestResponse(context);
    if (!rr) return next.handle();
    const request = rr.req as HttpRequest;
    const metering = reservationOf(context, request);
    if (!metering) {
      return this.options.recordAllRequests && context.getType() === 'http'
        ? this.recordUnmetered(context, request, next)
        : next.handle();
    }
    // Bound twice (globally and on the controller): the outer binding settles.
    if (metering.intercepted) return next.handle();
    metering.intercepted = true;
    const route = this.route(context);
    const http = context.getType() === 'http';
    if (route.sse && http) return this.meterSse(context, request, metering, route, next);
    // A plain Observable rather than an operator chain: Nest handlers emit one value, which is held until
    // its ledger row has committed (with an intent, not held), then passed on unchanged. A streamed body
    // (StreamableFile, or an SDK stream sent as server-sent events) is passed on at once and settled when
    // it ends.
    return new Observable<unknown>((subscriber) => {
      let value: unknown;
      let emitted = false;
      let handedOff = false;
      const measure = () => this.measure(context, request, metering, value);
      const inner = next.handle().subscribe({
        next: (v) => {
          value = v;
          emitted = true;
        },
        error: (error: unknown) => {
          const usage = () => (value === undefined ? ZERO_USAGE : measure());
          const settled = this.settle(context, request, metering, route, 'error', usage, 0, error);
          if (metering.reservation.intent) subscriber.error(error);
          else void settled.then(() => subscriber.error(error));
        },
        complete: () => {
          const streamed = http ? this.meterStreamed(context, request, metering, route, value) : undefined;
          if (streamed) {
            handedOff = true;
            subscriber.next(streamed);
            subscriber.complete();
            return;
          }
          const settled = this.settle(
            context,
            request,
            metering,
            route,
            emitted ? 'ok' : 'partial',
            measure,
            jsonByteLength(value),
          );
          const release = () => {
            if (emitted) subscriber.next(value);
            subscriber.complete();
          };
          if (metering.reservation.intent) release();
          else void settled.then(release);
        },
      });
      return () => {
        inner.unsubscribe();
        // Unsubscribed before the end (the client left): still settle, as partial.
        if (!metering.settled && !handedOff)
          void this.settle(context, request, metering, route, 'partial', measure, jsonByteLength(value));
      };
    });
  }

  /**
   * The request and response of a call, as `UsageLimitGuard.getRequestResponse` finds them: override both
   * alike for another context.
   */
  protected getRequestResponse(context: ExecutionContext): RequestResponse | undefined {
    return defaultRequestResponse(context);
  }

  /**
   * Usage of a handler's result: through the route's `usage` reader when it has one, else the provider's
   * response as it is. A result that reports no usage (an app's own body) is charged the reservation's
   * estimate, flagged, and its route named in one warning.
   */
  private measure(
    context: ExecutionContext,
    request: HttpRequest,
    metering: MeteringContext,
    value: unknown,
  ): MeasuredUsage {
    const input = inputOf(context, request);
    const reader = metering.route?.usage;
    const result = reader ? reader(value, request, input) : value;
    if (reader && isUsageFigures(result)) checkFigures(result, `@Metered usage of ${handlerName(context)}`);
    const { usage, reported } = this.options.extractor.settleUsage(
      metering.provider,
      input,
      result,
      metering.model,
      metering.estimate,
    );
    if (!reported) this.warnNoUsage(context, metering, usage);
    return usage;
  }

  private warnNoUsage(context: ExecutionContext, metering: MeteringContext, usage: MeasuredUsage): void {
    const handler = context.getHandler();
    if (this.warnedRoutes.has(handler)) return;
    this.warnedRoutes.add(handler);
    this.logger.warn(
      `${handlerName(context)} (@Metered provider '${metering.provider}') returned a result without usage the ` +
        `${metering.provider} adapter reads, so it was charged its reservation's estimate ` +
        `(${usage.inputTokens} input + ${usage.outputTokens} output tokens, flagged estimated). Return the ` +
        `provider's response, or read the usage out of your result with ` +
        `@Metered({ provider: '${metering.provider}', usage: (result) => ({ inputTokens, outputTokens }) }).`,
    );
  }

  /**
   * A streamed result over HTTP, passed on at once and settled when it ends: a `StreamableFile` (server-sent
   * events or NDJSON, such as an SDK stream's `toReadableStream()`), or an SDK stream / async iterable, which
   * is sent as server-sent events (`data: <chunk JSON>`). `undefined` for any other result.
   */
  private meterStreamed(
    context: ExecutionContext,
    request: HttpRequest,
    metering: MeteringContext,
    route: RouteInfo,
    value: unknown,
  ): StreamableFile | undefined {
    if (value instanceof StreamableFile)
      return this.meterStreamableFile(context, request, metering, route, value);
    if (!isAsyncIterable(value) || Buffer.isBuffer(value)) return undefined;
    return this.meterIterable(context, request, metering, route, value);
  }

  /**
   * Server-sent events (`@Sse()`): each event's data is folded into the stream's usage; settled when the
   * stream ends, or as `partial` for what was produced when the client leaves early.
   */
  private meterSse(
    context: ExecutionContext,
    request: HttpRequest,
    metering: MeteringContext,
    route: RouteInfo,
    next: CallHandler,
  ): Observable<unknown> {
    const stream = new StreamUsage();
    let events = 0;
    let bytes = 0;
    const measure = () =>
      this.options.extractor.measureStream(metering.provider, request.body, stream, metering.model);
    return new Observable<unknown>((subscriber) => {
      const inner = next.handle().subscribe({
        next: (event) => {
          const data = (event as { data?: unknown } | null)?.data;
          if (data !== undefined) {
            events++;
            bytes += jsonByteLength(data);
            stream.push(data);
          }
          subscriber.next(event);
        },
        error: (error: unknown) => {
          void this.settle(
            context,
            request,
            metering,
            route,
            'error',
            events ? measure : () => ZERO_USAGE,
            bytes,
            error,
          );
          subscriber.error(error);
        },
        complete: () => {
          void this.settle(context, request, metering, route, 'ok', measure, bytes);
          subscriber.complete();
        },
      });
      return () => {
        inner.unsubscribe();
        if (!metering.settled) void this.settle(context, request, metering, route, 'partial', measure, bytes);
      };
    });
  }

  /**
   * A handler that pipes a provider's stream back (`new StreamableFile(upstream)`): the bytes pass through
   * unchanged while they are read as server-sent events (`data:` lines) or, when the body starts with `{`,
   * as NDJSON (one chunk per line, as an SDK stream's `toReadableStream()` writes); settled when the body
   * ends, as `partial` when the connection closes first, as `error` when the source fails.
   */
  private meterStreamableFile(
    context: ExecutionContext,
    request: HttpRequest,
    metering: MeteringContext,
    route: RouteInfo,
    file: StreamableFile,
  ): StreamableFile {
    const stream = new StreamUsage();
    const decoder = new TextDecoder();
    const sse = createParser({ onEvent: (e) => stream.push(e.data), maxBufferSize: 4 * 1024 * 1024 });
    let format: 'sse' | 'ndjson' | undefined;
    let line = '';
    const feed = (text: string, last: boolean) => {
      if (format === undefined) {
        const t = text.trimStart();
        if (t === '' && !last) return void (line += text);
        format = t.startsWith('{') ? 'ndjson' : 'sse';
        text = line + text;
        line = '';
      }
      if (format === 'sse') return sse.feed(last ? text + '\n\n' : text);
      const lines = (line + text).split('\n');
      line = last ? '' : lines.pop()!;
      if (line.length > 4 * 1024 * 1024) line = '';
      for (const l of lines) if (l.trim()) stream.push(l);
    };
    let bytes = 0;
    const measure = () =>
      this.options.extractor.measureStream(metering.provider, request.body, stream, metering.model);
    const settle = (outcome: Outcome, error?: unknown) => {
      if (!metering.settled)
        void this.settle(context, request, metering, route, outcome, measure, bytes, error);
    };
    const tap = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        try {
          feed(decoder.decode(chunk, { stream: true }), false);
        } catch {
          // An oversized or malformed event: the bytes still pass; usage falls back to estimates.
        }
        callback(null, chunk);
      },
      flush(callback) {
        try {
          feed(decoder.decode(), true);
        } catch {
          // as above
        }
        settle('ok');
        callback();
      },
    });
    const source = file.getStream();
    source.once('error', (e) => {
      settle('error', e);
      tap.destroy(e);
    });
    this.onClose(context, () => {
      if (metering.settled) return;
      // A client that hangs up on the provider's end marker (the SDKs close at `[DONE]`) read it all.
      settle(stream.complete || stream.final ? 'ok' : 'partial');
      source.destroy();
    });
    source.pipe(tap);
    return new StreamableFile(tap, file.options);
  }

  /**
   * A handler that returns an SDK stream (or any async iterable of chunks): sent as server-sent events, one
   * `data: <chunk JSON>` per chunk, and settled from its chunks when it ends (`partial` when the client
   * leaves first, which also stops the upstream iteration).
   */
  private meterIterable(
    context: ExecutionContext,
    request: HttpRequest,
    metering: MeteringContext,
    route: RouteInfo,
    value: AsyncIterable<unknown>,
  ): StreamableFile {
    let bytes = 0;
    const metered =
      meterStream(value, (how, usage, error) => {
        const measure = () =>
          this.options.extractor.measureStream(metering.provider, request.body, usage, metering.model);
        if (!metering.settled)
          void this.settle(context, request, metering, route, how, measure, bytes, error);
      }) ?? value;
    async function* events(): AsyncGenerator<string> {
      for await (const chunk of metered) {
        const line = `data: ${typeof chunk === 'string' ? chunk : JSON.stringify(chunk)}\n\n`;
        bytes += Buffer.byteLength(line);
        yield line;
      }
    }
    const body = Readable.from(events());
    this.onClose(context, () => {
      if (!body.readableEnded) body.destroy();
    });
    return new StreamableFile(body, { type: 'text/event-stream' });
  }

  private onClose(context: ExecutionContext, listener: () => void): void {
    const response = context
      .switchToHttp()
      .getResponse<{ raw?: NodeJS.EventEmitter } & NodeJS.EventEmitter>();
    (response.raw ?? response).once('close', listener);
  }

  private settle(
    context: ExecutionContext,
    request: HttpRequest,
    metering: MeteringContext,
    route: RouteInfo,
    outcome: Outcome,
    measure: () => MeasuredUsage,
    responseBytes: number,
    error?: unknown,
  ): Promise<void> {
    if (metering.settled) return Promise.resolve();
    const ua = request.headers?.['user-agent'];
    return this.settler.settle(metering, {
      outcome,
      statusCode: error !== undefined ? statusOf(error) : this.successStatus(context, route),
      usage: measure,
      responseBytes,
      userAgent: typeof ua === 'string' ? ua : null,
      ip: typeof request.ip === 'string' ? request.ip : null,
    });
  }

  private recordUnmetered(
    context: ExecutionContext,
    request: HttpRequest,
    next: CallHandler,
  ): Observable<unknown> {
    const id = this.options.userId(request);
    if (typeof id !== 'string' || id === '') return next.handle();
    const startedAt = this.options.clock();
    const route = this.route(context);
    const record = (statusCode: number) => {
      const now = this.options.clock();
      this.store
        .recordRequest({
          requestId: newRequestId(),
          userId: id,
          provider: null,
          path: pathOf(request).slice(0, 512),
          method: request.method ?? 'GET',
          statusCode,
          durationMs: Math.max(0, now - startedAt),
          occurredAt: now,
        })
        .catch(() => this.metrics.recordTrackingFailure());
    };
    return next.handle().pipe(
      tap({
        next: () => record(this.successStatus(context, route)),
        error: (e: unknown) => record(statusOf(e)),
      }),
    );
  }

  private route(context: ExecutionContext): RouteInfo {
    const handler = context.getHandler();
    let info = this.routes.get(handler);
    if (!info) {
      info = routeInfoOf(handler);
      this.routes.set(handler, info);
    }
    return info;
  }

  private successStatus(context: ExecutionContext, route: RouteInfo): number {
    if (context.getType() !== 'http') return 200;
    if (route.httpCode) return route.httpCode;
    const res = context.getArgByIndex<{ statusCode?: number }>(1);
    if (res.statusCode && res.statusCode !== 200) return res.statusCode;
    return context.getArgByIndex<HttpRequest>(0).method === 'POST' ? 201 : 200;
  }
}

function isAsyncIterable(v: unknown): v is AsyncIterable<unknown> {
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof (v as Record<PropertyKey, unknown>)[Symbol.asyncIterator] === 'function'
  );
}
