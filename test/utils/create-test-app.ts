import type { NestExpressApplication } from '@nestjs/platform-express';
import {
  Injectable,
  Module,
  type DynamicModule,
  type INestApplication,
  type LoggerService,
  type Provider,
  type Type,
} from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  UsageMonitoringModule,
  type Plan,
  type SharedStorageOptions,
  type SqliteStorageOptions,
  type StorageOptions,
  type UsageMonitoringModuleExtras,
  type UsageMonitoringModuleOptions,
} from '@app/usage-monitoring';
import { AI_TEXT_GROUP } from '@app/usage-monitoring/usage-monitoring.constants';
import {
  DetectedController,
  FakeAnthropicController,
  FakeOpenAiController,
  FakeTavilyController,
  MarkedController,
  StoreProbe,
  TestAuthGuard,
} from './test-controllers';
import { createSchema, dropSchema, pgOptions, SQLITE_DRIVER, STORE } from './test-store';

export type ModuleStyle = 'forRoot' | 'useFactory' | 'useClass';
export type Platform = 'express' | 'fastify';

export interface TestAppOptions {
  style?: ModuleStyle;
  platform?: Platform;
  /** Overrides merged over the test defaults (plans, a fresh temporary dataDir). */
  usage?: Partial<UsageMonitoringModuleOptions>;
  healthController?: boolean;
  /** The admin API's extra (`adminController`). */
  adminController?: UsageMonitoringModuleExtras['adminController'];
  /** The dashboard's extra (`dashboard`). */
  dashboard?: UsageMonitoringModuleExtras['dashboard'];
  /** Extra controllers. */
  controllers?: Type[];
  /** Extra modules of the app module (GraphQL, …). */
  imports?: DynamicModule[];
  /** Called before the app listens (to connect a microservice, …). */
  beforeListen?: (app: INestApplication) => Promise<void> | void;
  /** Extra providers of the app module, registered after the test authentication guard. */
  providers?: Provider[];
  /** Register the test authentication as a global guard (default); `false` when `providers` does. */
  authGuard?: boolean;
  /** Force a store; by default the project's (`STORE`), unless `usage.storage` says otherwise. */
  store?: 'sqlite' | 'postgres';
  /** Further options of the shared store, when the app runs on PostgreSQL. */
  shared?: Partial<Omit<SharedStorageOptions, 'type' | 'dataSource'>>;
  /** Reuse a PostgreSQL schema (several apps on one shared database). */
  schema?: string;
  /** Connect to PostgreSQL through another port (a proxy the test can cut). */
  pgPort?: number;
  /** JSON body limit of the app's body parser (Express), e.g. `'1mb'`; Nest's default is 100 KB. */
  bodyLimit?: string;
  /** Where Nest's logs go (default: nowhere). */
  logger?: LoggerService;
}

export interface TestApp {
  app: INestApplication;
  url: string;
  /** Which store this app runs on. */
  store: 'sqlite' | 'postgres';
  /** Per-user SQLite files (sqlite) — a temporary directory either way. */
  dataDir: string;
  /** The PostgreSQL schema of this app (postgres). */
  schema?: string;
  probe: StoreProbe;
  close(): Promise<void>;
}

/** Test plans: `free` has 5 AI text calls a month; `tokens` caps tokens; `zero` allows nothing. */
export const TEST_PLANS: Plan[] = [
  {
    name: 'free',
    limits: [
      { metric: 'calls', scope: AI_TEXT_GROUP, period: 'month', max: 5 },
      { metric: 'calls', scope: 'tavily', period: 'month', max: 3 },
      { metric: 'cost', scope: '*', period: 'month', max: 2 },
    ],
  },
  {
    name: 'hundred',
    limits: [
      { metric: 'calls', scope: 'openai', period: 'month', max: 100 },
      { metric: 'tokens', scope: AI_TEXT_GROUP, period: 'month', max: 1_000_000 },
      { metric: 'cost', scope: '*', period: 'day', max: 1000 },
    ],
  },
  { name: 'tokens', limits: [{ metric: 'tokens', scope: AI_TEXT_GROUP, period: 'month', max: 10_000 }] },
  { name: 'zero', limits: [{ metric: 'calls', scope: '*', period: 'month', max: 0 }] },
  { name: 'cents', limits: [{ metric: 'cost', scope: '*', period: 'month', max: 0.01 }] },
  { name: 'unlimited', limits: [] },
  { name: 'big', limits: [{ metric: 'calls', scope: '*', period: 'month', max: 1_000_000_000 }] },
];

/** Test users pick their plan with a prefix: `plan=hundred;alice` is on `hundred`; others are on `free`. */
export function planFromUserId(userId: string): string | undefined {
  return /^plan=(\w+);/.exec(userId)?.[1];
}

export function tempDataDir(): string {
  return mkdtempSync(join(tmpdir(), 'usage-monitoring-test-'));
}

/**
 * Builds the app every end-to-end spec uses: the library's module (by `forRoot`, `forRootAsync` with a
 * factory, or with a class), fake provider controllers, test auth, on Express or Fastify, listening on
 * 127.0.0.1 with a fresh data directory.
 */
export async function createTestApp(opts: TestAppOptions = {}): Promise<TestApp> {
  const given = opts.usage?.storage as
    SqliteStorageOptions | { type: 'custom' | 'shared'; dataDir?: undefined } | undefined;
  const ownDir = !given?.dataDir;
  const dataDir = given?.dataDir ?? tempDataDir();
  const onPostgres =
    opts.store === 'postgres' ||
    (opts.store === undefined && STORE === 'postgres' && !given?.type && !given?.dataDir);
  const schema = onPostgres ? (opts.schema ?? (await createSchema())) : undefined;
  const storage: StorageOptions =
    given?.type === 'custom' || given?.type === 'shared'
      ? opts.usage!.storage!
      : schema
        ? { type: 'shared', dataSource: pgOptions(schema, opts.pgPort), ...opts.shared }
        : { driver: SQLITE_DRIVER, ...(given as SqliteStorageOptions), dataDir };
  const options: UsageMonitoringModuleOptions = {
    plans: TEST_PLANS,
    plan: planFromUserId,
    ...opts.usage,
    storage,
  };
  const extras = {
    healthController: opts.healthController,
    adminController: opts.adminController,
    dashboard: opts.dashboard,
  };

  @Injectable()
  class OptionsFactory {
    createUsageMonitoringOptions(): UsageMonitoringModuleOptions {
      return options;
    }
  }

  const usageModule =
    opts.style === 'useFactory'
      ? UsageMonitoringModule.forRootAsync({ ...extras, useFactory: async () => options })
      : opts.style === 'useClass'
        ? UsageMonitoringModule.forRootAsync({ ...extras, useClass: OptionsFactory })
        : UsageMonitoringModule.forRoot({ ...options, ...extras });

  @Module({
    imports: [usageModule, ...(opts.imports ?? [])],
    controllers: [
      FakeOpenAiController,
      FakeAnthropicController,
      FakeTavilyController,
      DetectedController,
      MarkedController,
      ...(opts.controllers ?? []),
    ],
    providers: [
      ...(opts.authGuard === false ? [] : [{ provide: APP_GUARD, useClass: TestAuthGuard }]),
      StoreProbe,
      ...(opts.providers ?? []),
    ],
  })
  class TestAppModule {}

  const moduleRef = await Test.createTestingModule({ imports: [TestAppModule] }).compile();
  let app: INestApplication;
  if (opts.platform === 'fastify') {
    app = moduleRef.createNestApplication<NestFastifyApplication>(new FastifyAdapter(), {
      logger: opts.logger ?? false,
    });
  } else {
    app = moduleRef.createNestApplication<NestExpressApplication>({ logger: opts.logger ?? false });
    if (opts.bodyLimit) (app as NestExpressApplication).useBodyParser('json', { limit: opts.bodyLimit });
  }
  app.enableShutdownHooks();
  await app.init();
  if (opts.platform === 'fastify')
    await (app as NestFastifyApplication).getHttpAdapter().getInstance().ready();
  await opts.beforeListen?.(app);
  await app.listen(0, '127.0.0.1');
  const address = app.getHttpServer().address() as { port: number };
  return {
    app,
    url: `http://127.0.0.1:${address.port}`,
    store: schema ? 'postgres' : 'sqlite',
    dataDir,
    schema,
    probe: app.get(StoreProbe),
    async close() {
      await app.close();
      if (ownDir) rmSync(dataDir, { recursive: true, force: true });
      if (schema && !opts.schema) await dropSchema(schema);
    },
  };
}
