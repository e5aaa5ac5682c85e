import {
  HttpException,
  StreamableFile,
  Inject,
  Injectable,
  Logger,
  type CallHandler,
  type ExecutionContext,
  type NestInterceptor,
} from '@nestjs/common';
import { Transform } from 'node:stream';
import { createParser } from 'eventsource-parser';
import { Observable, tap } from 'rxjs';
import { UsageAlerts } from '../alerts/usage-alerts.service';
import { EnforcementMetrics } from '../enforcement/enforcement-metrics';
import type { MeteringContext } from '../enforcement/metering-context';
import { ThrottledLogger } from '../enforcement/throttled-logger';
import { RollingStats } from '../health/rolling-stats';
import type { UsageEventRecord, UsageStore } from '../storage/usage-store.interface';
import { NORMALIZED_OPTIONS, RESERVATION_KEY, USAGE_STORE } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { UsageRequest } from '../usage-monitoring.options';
import { newRequestId } from './request-id';
import { pathOf } from './request-path';
import { routeInfoOf, type RouteInfo } from './route-metadata';
import { StreamUsage } from './stream-usage';
import type { MeasuredUsage } from './usage-extractor';

type HttpRequest = UsageRequest & {
  method?: string;
  originalUrl?: string;
  url?: string;
  ip?: string;
  body?: unknown;
  [RESERVATION_KEY]?: MeteringContext;
};

type Outcome = UsageEventRecord['outcome'];

const ZERO_USAGE: MeasuredUsage = {
  inputTokens: 0,
  outputTokens: 0,
  searches: 0,
  images: 0,
  pages: 0,
  estimated: false,
};

/**
 * Settles what the guard reserved, after the handler: reads the provider's own usage from the response
 * (estimated and flagged where missing), prices it, and appends the ledger row. The response is released
 * once that row has committed; the handler's result and errors pass through unchanged, and a tracking
 * failure never fails the request. Routes the guard did not meter pass straight through.
 */
@Injectable()
export class MeteringInterceptor implements NestInterceptor {
  private readonly logger = new Logger(MeteringInterceptor.name);
  private readonly throttledLog = new ThrottledLogger(this.logger);
  private readonly routes = new WeakMap<object, RouteInfo>();

  /** @internal Nest injects these; a subclass without a constructor of its own inherits them. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly stats: RollingStats,
    private readonly alerts: UsageAlerts,
    private readonly metrics: EnforcementMetrics,
  ) {}

  /** Settles a metered request after its handler; passes anything else through. */
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle();
    const request = context.switchToHttp().getRequest<HttpRequest>();
    const metering = request[RESERVATION_KEY];
    if (!metering) {
      return this.options.recordAllRequests ? this.recordUnmetered(context, request, next) : next.handle();
    }
    // Bound twice (globally and on the controller): the outer binding settles.
    if (metering.intercepted) return next.handle();
    metering.intercepted = true;
    const route = this.route(context);
    if (route.sse) return this.meterSse(context, metering, route, next);
    // A plain Observable rather than an operator chain: Nest handlers emit one value, which is held until
    // its ledger row has committed, then passed on unchanged. A streamed body (StreamableFile) is passed on
    // at once and settled when it ends.
    return new Observable<unknown>((subscriber) => {
      let value: unknown;
      let emitted = false;
      let handedOff = false;
      const measure = () =>
        this.options.extractor.measure(metering.provider, request.body, value, metering.model);
      const inner = next.handle().subscribe({
        next: (v) => {
          value = v;
          emitted = true;
        },
        error: (error: unknown) => {
          const usage = () => (value === undefined ? ZERO_USAGE : measure());
          void this.settle(context, metering, route, 'error', usage, 0, error).then(() =>
            subscriber.error(error),
          );
        },
        complete: () => {
          if (value instanceof StreamableFile) {
            handedOff = true;
            subscriber.next(this.meterStreamableFile(context, metering, route, value));
            subscriber.complete();
            return;
          }
          void this.settle(
            context,
            metering,
            route,
            emitted ? 'ok' : 'partial',
            measure,
            byteLength(value),
          ).then(() => {
            if (emitted) subscriber.next(value);
            subscriber.complete();
          });
        },
      });
      return () => {
        inner.unsubscribe();
        // Unsubscribed before the end (the client left): still settle, as partial.
        if (!metering.settled && !handedOff)
          void this.settle(context, metering, route, 'partial', measure, byteLength(value));
      };
    });
  }

  /**
   * Server-sent events (`@Sse()`): each event's data is folded into the stream's usage; settled when the
   * stream ends, or as `partial` for what was produced when the client leaves early.
   */
  private meterSse(
    context: ExecutionContext,
    metering: MeteringContext,
    route: RouteInfo,
    next: CallHandler,
  ): Observable<unknown> {
    const request = context.switchToHttp().getRequest<HttpRequest>();
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
            bytes += byteLength(data);
            stream.push(data);
          }
          subscriber.next(event);
        },
        error: (error: unknown) => {
          void this.settle(
            context,
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
          void this.settle(context, metering, route, 'ok', measure, bytes);
          subscriber.complete();
        },
      });
      return () => {
        inner.unsubscribe();
        if (!metering.settled) void this.settle(context, metering, route, 'partial', measure, bytes);
      };
    });
  }

  /**
   * A handler that pipes a provider's event stream back (`new StreamableFile(upstream)`): the bytes pass
   * through unchanged while an SSE parser reads their `data:` lines; settled when the body ends, as
   * `partial` when the connection closes first, as `error` when the source fails.
   */
  private meterStreamableFile(
    context: ExecutionContext,
    metering: MeteringContext,
    route: RouteInfo,
    file: StreamableFile,
  ): StreamableFile {
    const http = context.switchToHttp();
    const request = http.getRequest<HttpRequest>();
    const stream = new StreamUsage();
    const decoder = new TextDecoder();
    const parser = createParser({ onEvent: (e) => stream.push(e.data), maxBufferSize: 4 * 1024 * 1024 });
    let bytes = 0;
    const measure = () =>
      this.options.extractor.measureStream(metering.provider, request.body, stream, metering.model);
    const settle = (outcome: Outcome, error?: unknown) => {
      if (!metering.settled) void this.settle(context, metering, route, outcome, measure, bytes, error);
    };
    const tap = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        try {
          parser.feed(decoder.decode(chunk, { stream: true }));
        } catch {
          // An oversized or malformed event: the bytes still pass; usage falls back to estimates.
        }
        callback(null, chunk);
      },
      flush(callback) {
        try {
          parser.feed(decoder.decode() + '\n\n');
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
    const response = http.getResponse<{ raw?: NodeJS.EventEmitter } & NodeJS.EventEmitter>();
    (response.raw ?? response).once('close', () => {
      if (metering.settled) return;
      settle('partial');
      source.destroy();
    });
    source.pipe(tap);
    return new StreamableFile(tap, file.options);
  }

  private async settle(
    context: ExecutionContext,
    metering: MeteringContext,
    route: RouteInfo,
    outcome: Outcome,
    measure: () => MeasuredUsage,
    responseBytes: number,
    error?: unknown,
  ): Promise<void> {
    if (metering.settled) return;
    metering.settled = true;
    try {
      const request = context.switchToHttp().getRequest<HttpRequest>();
      const { provider, reservation } = metering;
      const statusCode = error !== undefined ? statusOf(error) : this.successStatus(context, route);
      const usage = measure();
      const model = usage.model ?? this.options.priceBook.defaultModel(provider) ?? null;
      const priced = this.options.priceBook.price(provider, model ?? undefined, usage);
      const now = this.options.clock();
      const ua = request.headers['user-agent'];
      const result = await this.store.settle(reservation, {
        actual: { calls: 1, tokens: usage.inputTokens + usage.outputTokens, costMicros: priced.costMicros },
        event: {
          requestId: reservation.requestId,
          userId: reservation.userId,
          provider,
          model,
          endpoint: pathOf(request).slice(0, 512),
          method: request.method ?? 'GET',
          statusCode,
          inputTokens: usage.inputTokens,
          outputTokens: usage.outputTokens,
          cachedInputTokens: usage.cachedInputTokens ?? 0,
          cacheWriteTokens: usage.cacheWriteTokens ?? 0,
          reasoningTokens: usage.reasoningTokens ?? 0,
          costMicros: priced.costMicros,
          priceVersion: priced.priceVersion ?? null,
          responseTimeMs: Math.max(0, now - metering.startedAt),
          requestBytes: Number(request.headers['content-length']) || 0,
          responseBytes,
          userAgent: typeof ua === 'string' ? ua.slice(0, 512) : null,
          ip: typeof request.ip === 'string' ? request.ip.slice(0, 64) : null,
          searches: usage.searches,
          images: usage.images,
          pages: usage.pages,
          estimated: usage.estimated,
          outcome,
          periodKey: metering.ledgerPeriodKey,
          occurredAt: now,
        },
      });
      this.stats.record(statusCode);
      if (result.alerts.length) this.alerts.publish(result.alerts);
    } catch (e) {
      this.metrics.recordTrackingFailure();
      this.throttledLog.error(
        'settle',
        `usage could not be recorded: ${(e as Error)?.message ?? 'unknown error'}`,
      );
    }
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
    if (route.httpCode) return route.httpCode;
    const http = context.switchToHttp();
    const res = http.getResponse<{ statusCode?: number }>();
    if (res.statusCode && res.statusCode !== 200) return res.statusCode;
    return http.getRequest<HttpRequest>().method === 'POST' ? 201 : 200;
  }
}

function statusOf(error: unknown): number {
  return error instanceof HttpException ? error.getStatus() : 500;
}

function byteLength(value: unknown): number {
  if (value === undefined || value === null) return 0;
  if (typeof value === 'string') return Buffer.byteLength(value);
  if (Buffer.isBuffer(value)) return value.length;
  try {
    return Buffer.byteLength(JSON.stringify(value) ?? '');
  } catch {
    return 0;
  }
}
