/**
 * One benchmark server, configured by environment, in its own process:
 * BENCH_MODE   bare | noop | noop-global | throttler | unmetered-global | unmetered-controller | metered |
 *              meter-run (UsageMeter.run called from the handler, no guard or interceptor)
 * BENCH_STORE  sqlite | postgres (metered modes)
 * BENCH_PLATFORM express | fastify
 * BENCH_DATA_DIR, BENCH_SCHEMA, BENCH_MAX_OPEN, BENCH_JOURNAL=<applyDelayMs> (cross-user journal),
 * BENCH_DRIVER sqlite3 | better-sqlite3 (per-user SQLite), BENCH_INTENT=0|1 (storage.durableIntent off
 *              or on; the store's default otherwise), BENCH_LEASES=<requests per lease>|0 (shared PostgreSQL;
 *              0: leases off; the default otherwise)
 * BENCH_PROFILE=<file>: SIGUSR2 starts V8's sampling profiler (1 ms), the next SIGUSR2 writes the
 *              profile (`.cpuprofile` JSON) to that file and prints `PROFILED` (see `bench:cpu --profile`).
 * BENCH_HEAP=<file>: the same with V8's sampling heap profiler (see `bench:heap`); inlining is off in such a
 *              server.
 * BENCH_GC=1: counts V8's garbage collections (a `PerformanceObserver`); SIGURG prints the totals so far as
 *              `GC <scavenges> <scavenge ms> <major>` (see `bench:cpu --gc`), then `STALLS <longest
 *              collection ms> <event-loop delay p99 ms> <max ms>` since the previous SIGURG (`bench:latency`).
 * Prints `LISTENING <port>` when ready.
 */
import 'reflect-metadata';
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { constants as perfConstants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import {
  Body,
  Controller,
  Get,
  HttpCode,
  Inject,
  Injectable,
  Module,
  Post,
  Req,
  UseGuards,
  UseInterceptors,
  type CallHandler,
  type CanActivate,
  type DynamicModule,
  type ExecutionContext,
  type NestInterceptor,
  type Type,
} from '@nestjs/common';
import { APP_GUARD, APP_INTERCEPTOR, ModuleRef, NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { ThrottlerGuard, ThrottlerModule } from '@nestjs/throttler';
import type { Observable } from 'rxjs';
import {
  Metered,
  MeteringInterceptor,
  UsageLimitGuard,
  UsageMeter,
  UsageMonitoringModule,
  type StorageOptions,
} from '@app/usage-monitoring';
import { AI_TEXT_GROUP } from '@app/usage-monitoring/usage-monitoring.constants';
import { USAGE_STORE } from '@app/usage-monitoring/usage-monitoring.internal-constants';

const mode = process.env.BENCH_MODE ?? 'bare';
const platform = process.env.BENCH_PLATFORM ?? 'express';

const ANSWER = {
  id: 'chatcmpl-bench',
  object: 'chat.completion',
  model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 },
};

@Injectable()
class NoopGuard implements CanActivate {
  canActivate(): boolean {
    return true;
  }
}

@Injectable()
class NoopInterceptor implements NestInterceptor {
  intercept(_context: ExecutionContext, next: CallHandler): Observable<unknown> {
    return next.handle();
  }
}

function chatController(decorate: (target: Type) => void): Type {
  @Controller('openai/v1')
  class ChatController {
    @Post('chat/completions')
    @HttpCode(200)
    chat(@Body() body: unknown) {
      void body; // parsed and bound as an app's handler would have it, in every mode alike
      return ANSWER;
    }
  }
  decorate(ChatController);
  return ChatController;
}

/** The same route metered by `UsageMeter.run` inside the handler: the documented fast path. */
@Controller('openai/v1')
class MeterRunController {
  constructor(@Inject(UsageMeter) private readonly meter: UsageMeter) {}

  @Post('chat/completions')
  @HttpCode(200)
  chat(@Body() body: unknown, @Req() req: { user?: { id: string } }) {
    return this.meter.run({ userId: req.user!.id, provider: 'openai', request: body }, () => ANSWER);
  }
}

/**
 * `GET /bench/pending`: the store's writes not yet in their final database (0 without one), so that the bench
 * can wait until a server has finished what its load left (many users' paced commits run for tens of seconds)
 * before it loads the next one.
 */
@Controller('bench')
class PendingController {
  constructor(@Inject(ModuleRef) private readonly modules: ModuleRef) {}

  @Get('pending')
  pending(): { pending: number } {
    let store: { pendingWrites?: () => number } | undefined;
    try {
      store = this.modules.get(USAGE_STORE, { strict: false });
    } catch {
      store = undefined; // a mode without the usage module
    }
    return { pending: store?.pendingWrites?.() ?? 0 };
  }
}

@Controller('hello')
class HelloController {
  @Get()
  hello() {
    return { message: 'hello' };
  }
}

/** The host's authentication, the same in every mode: the bearer token is the user id. */
function auth(
  req: { headers: Record<string, string | undefined>; user?: unknown },
  _res: unknown,
  next: () => void,
) {
  const h = req.headers.authorization;
  if (h && h.startsWith('Bearer ')) req.user = { id: h.slice(7) };
  next();
}

const metered = (t: Type) => {
  UseGuards(UsageLimitGuard)(t);
  UseInterceptors(MeteringInterceptor)(t);
  Metered({ provider: 'openai' })(t);
};

/** A store that keeps nothing: isolates the library's own per-request cost from the database's (experiments). */
const nullStore = {
  reserve: (r: { requestId: string; userId: string; provider: string; charges: unknown[]; now: number }) => ({
    admitted: true as const,
    reservation: {
      requestId: r.requestId,
      userId: r.userId,
      provider: r.provider,
      charges: r.charges,
      createdAt: r.now,
    },
  }),
  settle: () => Promise.resolve({ alerts: [] }),
  release: () => undefined,
  recordRequest: () => Promise.resolve(),
  readCounters: () => Promise.resolve([]),
  overrides: () => Promise.resolve([]),
  health: () => Promise.resolve({ up: true }),
  close: () => Promise.resolve(),
};

function storage(): StorageOptions {
  if (process.env.BENCH_STORE === 'postgres') {
    return {
      type: 'shared',
      dataSource: {
        type: 'postgres',
        host: '127.0.0.1',
        port: 5432,
        username: 'postgres',
        database: 'test',
        extra: { options: `-c search_path=${process.env.BENCH_SCHEMA}` },
      },
      poolSize: 16,
      // The store's defaults unless set: leases (64 requests' worth; BENCH_LEASES=0 turns them off), no durable intent.
      leases: process.env.BENCH_LEASES
        ? process.env.BENCH_LEASES !== '0' && { requests: Number(process.env.BENCH_LEASES) }
        : undefined,
      durableIntent: process.env.BENCH_INTENT ? process.env.BENCH_INTENT === '1' : undefined,
    };
  }
  return {
    dataDir: process.env.BENCH_DATA_DIR ?? './bench-data',
    maxOpenDataSources: Number(process.env.BENCH_MAX_OPEN) || 256,
    driver: process.env.BENCH_DRIVER === 'better-sqlite3' ? 'better-sqlite3' : 'sqlite3',
    journal: process.env.BENCH_JOURNAL ? { applyDelayMs: Number(process.env.BENCH_JOURNAL) } : undefined,
    durableIntent: process.env.BENCH_INTENT ? process.env.BENCH_INTENT === '1' : undefined,
  };
}

const usageModule = () =>
  withNullStore(
    UsageMonitoringModule.forRoot({
      plans: [
        {
          name: 'bench',
          limits: [
            { metric: 'calls', scope: AI_TEXT_GROUP, period: 'month', max: 1e12 },
            { metric: 'tokens', scope: AI_TEXT_GROUP, period: 'month', max: 1e15 },
            { metric: 'cost', scope: '*', period: 'month', max: 1e6 },
          ],
        },
      ],
      storage: storage(),
    }),
  );

/**
 * `BENCH_STORE=null`: the module's store provider overridden by `nullStore` (an experiment, not a mode). The
 * store is a provider of the module's own metadata, not of the dynamic module: a later provider of the same
 * token wins.
 */
function withNullStore(module: DynamicModule): DynamicModule {
  if (process.env.BENCH_STORE !== 'null') return module;
  return {
    ...module,
    providers: [...(module.providers ?? []), { provide: USAGE_STORE, useValue: nullStore }],
  };
}

function moduleFor(): Type {
  const imports: unknown[] = [];
  const providers: unknown[] = [];
  let controllers: Type[];
  switch (mode) {
    case 'bare':
      controllers = [chatController(() => undefined), HelloController];
      break;
    case 'noop':
      controllers = [
        chatController((t) => {
          UseGuards(NoopGuard)(t);
          UseInterceptors(NoopInterceptor)(t);
        }),
        HelloController,
      ];
      break;
    case 'noop-global':
      providers.push(
        { provide: APP_GUARD, useClass: NoopGuard },
        { provide: APP_INTERCEPTOR, useClass: NoopInterceptor },
      );
      controllers = [chatController(() => undefined), HelloController];
      break;
    case 'throttler':
      imports.push(ThrottlerModule.forRoot([{ ttl: 1000, limit: 1e9 }]));
      controllers = [chatController((t) => UseGuards(ThrottlerGuard)(t)), HelloController];
      break;
    case 'unmetered-global':
      imports.push(usageModule());
      providers.push(
        { provide: APP_GUARD, useClass: UsageLimitGuard },
        { provide: APP_INTERCEPTOR, useClass: MeteringInterceptor },
      );
      controllers = [chatController(() => undefined), HelloController];
      break;
    case 'meter-run':
      imports.push(usageModule());
      controllers = [MeterRunController, HelloController];
      break;
    case 'unmetered-controller':
    case 'metered':
      imports.push(usageModule());
      controllers = [chatController(metered), HelloController];
      break;
    default:
      throw new Error(`unknown BENCH_MODE ${mode}`);
  }

  @Module({
    imports: imports as never[],
    controllers: [...controllers, PendingController],
    providers: providers as never[],
  })
  class BenchModule {}
  return BenchModule;
}

/**
 * A profile between two SIGUSR2, written to `file`, then `PROFILED` (or `PROFILE FAILED …`) printed.
 * BENCH_PROFILE: the main thread's CPU profile (V8's sampling profiler, every 1 ms; `bench:cpu --profile`).
 * BENCH_HEAP: V8's sampling heap profile (a sample every 256 bytes on average, objects already collected
 * included; `bench:heap`). The optimising compiler's inlining is off in such a server, so that an
 * allocation is charged to the function that makes it rather than to the one it was inlined into.
 */
function profileOnSignal(file: string, kind: 'cpu' | 'heap'): void {
  const session = new Session();
  session.connect();
  let running = false;
  process.on('SIGUSR2', () => {
    if (!running) {
      running = true;
      if (kind === 'cpu')
        session.post('Profiler.enable', () =>
          session.post('Profiler.setSamplingInterval', { interval: 1000 }, () =>
            session.post('Profiler.start'),
          ),
        );
      else
        session.post('HeapProfiler.enable', () =>
          session.post('HeapProfiler.startSampling', {
            samplingInterval: 256,
            includeObjectsCollectedByMajorGC: true,
            includeObjectsCollectedByMinorGC: true,
          }),
        );
      return;
    }
    running = false;
    const done = (err: Error | null, res: { profile: object }) => {
      if (!err) writeFileSync(file, JSON.stringify(res.profile));
      process.stdout.write(err ? `PROFILE FAILED ${err.message}\n` : 'PROFILED\n');
    };
    if (kind === 'cpu') session.post('Profiler.stop', done);
    else session.post('HeapProfiler.stopSampling', done);
  });
}

/**
 * BENCH_GC: collections counted as they end; SIGURG prints the totals. How often the young generation is
 * collected follows how many bytes a request allocates, which holds still while req/s swing. A second
 * line, `STALLS …`, has the longest collection pause and the event loop's delay (p99 and max, ms) since the
 * previous SIGURG: where a slow request's time went, if it went on this thread.
 */
function countGcOnSignal(): void {
  const t = { minor: 0, minorMs: 0, major: 0, longestMs: 0 };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as { detail?: { kind?: number } }).detail?.kind;
      t.longestMs = Math.max(t.longestMs, e.duration);
      if (kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) {
        t.minor++;
        t.minorMs += e.duration;
      } else if (kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) t.major++;
    }
  }).observe({ entryTypes: ['gc'] });
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  process.on('SIGURG', () => {
    const ms = (ns: number) => (ns / 1e6).toFixed(1);
    process.stdout.write(
      `GC ${t.minor} ${t.minorMs.toFixed(3)} ${t.major}\n` +
        `STALLS ${t.longestMs.toFixed(1)} ${ms(loop.percentile(99))} ${ms(loop.max)}\n`,
    );
    t.longestMs = 0;
    loop.reset();
  });
}

async function main(): Promise<void> {
  if (process.env.BENCH_PROFILE) profileOnSignal(process.env.BENCH_PROFILE, 'cpu');
  else if (process.env.BENCH_HEAP) {
    setFlagsFromString('--no-turbo-inlining');
    profileOnSignal(process.env.BENCH_HEAP, 'heap');
  }
  if (process.env.BENCH_GC === '1') countGcOnSignal();
  const app =
    platform === 'fastify'
      ? await NestFactory.create(moduleFor(), new FastifyAdapter(), { logger: ['error'] })
      : await NestFactory.create(moduleFor(), { logger: ['error'] });
  // Not every signal Nest knows: SIGUSR2 toggles the profiler (BENCH_PROFILE).
  app.enableShutdownHooks(['SIGTERM', 'SIGINT']);
  // The host's authentication, as cheap as it gets on each platform.
  if (platform === 'fastify') {
    const fastify = (
      app.getHttpAdapter() as unknown as { getInstance(): { addHook: (...a: unknown[]) => void } }
    ).getInstance();
    fastify.addHook('onRequest', (req: never, _reply: unknown, done: () => void) =>
      auth(req, undefined, done),
    );
  } else {
    (app as unknown as { use(fn: typeof auth): void }).use(auth);
  }
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as { port: number }).port;
  process.stdout.write(`LISTENING ${port}\n`);
}

void main();
