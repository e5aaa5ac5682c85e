import { AI_TEXT_GROUP, EMERGENCY_FAIL_OPEN_ENV } from './usage-monitoring.constants';
import { checkOptionKeys, oneOf, shown } from './options-validation';
import type {
  SqliteStorageOptions,
  UsageMonitoringModuleOptions,
  UsageRequest,
} from './usage-monitoring.options';
import { UsageExtractor } from './metering/usage-extractor';
import { PlanCatalog } from './plans/plan-catalog';
import { PlanLookup } from './plans/plan-lookup';
import { PlanResolver } from './plans/plan-resolver';
import type { PlanAssignment } from './plans/plan.interface';
import { DEFAULT_MODELS, DEFAULT_PRICES } from './pricing/default-prices';
import { PriceBook, UNKNOWN_MODEL_POLICIES } from './pricing/price-book';
import {
  DEFAULT_IGNORED_PATH_PREFIXES,
  DEFAULT_PROVIDER_PATTERNS,
  ProviderDetector,
} from './providers/provider-detector';
import type { UsageAlert } from './alerts/usage-alert.interface';
import type { ClockSkew } from './storage/shared/shared-postgres.store';
import type {
  ResolvedLeases,
  ResolvedSharedStorage,
  SharedLeaseOptions,
  SharedStorageOptions,
} from './storage/shared/shared-store.options';
import { DataSource } from 'typeorm';
import type { MeterProvider } from '@opentelemetry/api';
import { loadBetterSqlite3, type SqliteDriver } from './storage/sqlite/sqlite-connection';

export type ResolvedStorage =
  | {
      type: 'sqlite';
      dataDir: string;
      maxOpenDataSources: number;
      openTimeoutMs: number;
      busyTimeoutMs: number;
      synchronous: 'normal' | 'full';
      driver: SqliteDriver;
      journal: { applyDelayMs: number; maxUsersInMemory: number };
      reservationTtlMs: number;
      durableIntent: boolean;
    }
  | ResolvedSharedStorage;

/** Options after validation and defaults, computed once at module init. */
export interface NormalizedUsageOptions {
  catalog: PlanCatalog;
  /** Providers named by the defaults and the options; start-up adds those of `@Metered` routes. */
  knownProviders: ReadonlySet<string>;
  providerGroups: Readonly<Record<string, readonly string[]>>;
  defaultPlan: string;
  plans: PlanResolver;
  resolvePlan: (userId: string) => PlanAssignment | undefined | Promise<PlanAssignment | undefined>;
  userId: (request: UsageRequest) => string | undefined;
  trustedUserHeader: string | undefined;
  anonymous: 'deny' | 'allow';
  anonymousUserId: string;
  detector: ProviderDetector | undefined;
  enforcementTimeoutMs: number;
  emergencyFailOpen: boolean;
  recordAllRequests: boolean;
  extractor: UsageExtractor;
  priceBook: PriceBook;
  storage: ResolvedStorage;
  /** Admitted requests are charged at their estimate if the process dies before they settle. */
  durableIntent: boolean;
  onAlert: ((alert: UsageAlert) => void) | undefined;
  /** Alert webhooks (per-user store), in the order given. */
  webhooks: ResolvedWebhook[];
  /** `false`: no instruments. */
  metrics: false | { meterProvider: MeterProvider | undefined; userIds: boolean };
  clock: () => number;
  /** Set in the shared mode when no clock was given: the store keeps it equal to the database clock's offset. */
  clockSkew: ClockSkew | undefined;
}

/** An alert webhook with its defaults applied. */
export interface ResolvedWebhook {
  url: string;
  secret: string;
  timeoutMs: number;
  initialDelayMs: number;
  maxDelayMs: number;
  maxAttempts: number;
}

export const DEFAULT_PROVIDER_GROUPS = { [AI_TEXT_GROUP]: ['gemini', 'openai', 'anthropic', 'mistral'] };

/** The default identity: the authenticated principal's `id`, then `sub`. Never a client header. */
export function defaultUserId(request: UsageRequest): string | undefined {
  const user = request.user as { id?: unknown; sub?: unknown } | undefined;
  const id = user?.id ?? user?.sub;
  if (typeof id === 'string') return id;
  if (typeof id === 'number' && Number.isFinite(id)) return String(id);
  return undefined;
}

/** `USAGE_LIMITS_EMERGENCY_FAIL_OPEN` ∈ {1, true, yes, on} (any case). */
export function envFailOpen(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['1', 'true', 'yes', 'on'].includes((env[EMERGENCY_FAIL_OPEN_ENV] ?? '').trim().toLowerCase());
}

function fail(message: string): never {
  throw new Error(`UsageMonitoringModule: ${message}`);
}

/** Runs a check that throws a bare message, prefixing it as every option error is. */
function checked<T>(check: () => T): T {
  try {
    return check();
  } catch (e) {
    return fail((e as Error).message);
  }
}

function positiveInt(value: unknown, name: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < min)
    fail(`${name} must be an integer ≥ ${min} (got ${shown(value)})`);
  return value as number;
}

function fn<T>(value: unknown, name: string): T | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'function') fail(`${name} must be a function`);
  return value as T;
}

/** Validates the options and fills in defaults. Throws an error naming the option to fix. */
export function normalizeOptions(options: UsageMonitoringModuleOptions): NormalizedUsageOptions {
  if (!options || typeof options !== 'object') fail('options are required ({ plans, ... })');
  checked(() => checkOptionKeys(options));
  const groups = options.providerGroups ?? DEFAULT_PROVIDER_GROUPS;
  if (typeof groups !== 'object' || groups === null)
    fail('providerGroups must be an object of provider name arrays');
  for (const [name, members] of Object.entries(groups)) {
    if (!Array.isArray(members) || members.some((m) => typeof m !== 'string' || m === '')) {
      fail(`providerGroups.${name} must be an array of provider names`);
    }
  }
  let catalog: PlanCatalog;
  try {
    catalog = new PlanCatalog(options.plans, groups);
  } catch (e) {
    fail((e as Error).message);
  }
  const defaultPlan = options.defaultPlan ?? (catalog.has('free') ? 'free' : catalog.names[0]);
  if (!catalog.has(defaultPlan))
    fail(`defaultPlan "${defaultPlan}" is not in plans (${catalog.names.join(', ')})`);

  const planFn = fn<NormalizedUsageOptions['resolvePlan']>(options.plan, 'plan');
  const planLookup =
    planFn &&
    new PlanLookup(
      planFn,
      positiveInt(options.planCacheMs, 'planCacheMs', 60_000, 0),
      positiveInt(options.planTimeoutMs, 'planTimeoutMs', 1000),
    );
  const userIdFn = fn<NormalizedUsageOptions['userId']>(options.userId, 'userId') ?? defaultUserId;
  const storage = resolveStorage(options);
  const userClock = fn<() => number>(options.clock, 'clock');
  const clockSkew: ClockSkew | undefined =
    storage.type === 'shared' && !userClock ? { offsetMs: 0 } : undefined;
  const clock = userClock ?? (clockSkew ? () => Date.now() + clockSkew.offsetMs : Date.now);
  const onAlert = fn<(a: UsageAlert) => void>(options.onAlert, 'onAlert');

  if (
    options.trustedUserHeader !== undefined &&
    (typeof options.trustedUserHeader !== 'string' || !/^[A-Za-z0-9-]+$/.test(options.trustedUserHeader))
  ) {
    fail('trustedUserHeader must be a header name such as "x-user-id"');
  }
  const anonymous = checked(() =>
    oneOf(options.anonymous ?? 'deny', ['deny', 'allow'] as const, 'anonymous'),
  );
  const anonymousUserId = options.anonymousUserId ?? '__anonymous__';
  if (typeof anonymousUserId !== 'string' || anonymousUserId === '')
    fail('anonymousUserId must be a non-empty string');

  const patterns: Record<string, string | RegExp> = { ...DEFAULT_PROVIDER_PATTERNS };
  for (const [provider, p] of Object.entries(options.providerPatterns ?? {})) {
    if (p === null) {
      delete patterns[provider];
      continue;
    }
    if (typeof p !== 'string' && !(p instanceof RegExp))
      fail(`providerPatterns.${provider} must be a string, a RegExp or null`);
    try {
      if (typeof p === 'string') new RegExp(p, 'i');
    } catch (e) {
      fail(`providerPatterns.${provider} is not a valid regular expression: ${(e as Error).message}`);
    }
    patterns[provider] = p;
  }
  const ignored = options.ignoredPathPrefixes ?? DEFAULT_IGNORED_PATH_PREFIXES;
  if (!Array.isArray(ignored) || ignored.some((p) => typeof p !== 'string'))
    fail('ignoredPathPrefixes must be an array of strings');
  const detection = checked(() =>
    oneOf(
      options.detectProviders ?? 'path',
      ['path', 'path-and-user-agent', false] as const,
      'detectProviders',
    ),
  );
  const detector = detection === false ? undefined : new ProviderDetector(patterns, ignored, detection);

  let priceBook: PriceBook;
  try {
    const policy = oneOf(options.unknownModels ?? 'highest-price', UNKNOWN_MODEL_POLICIES, 'unknownModels');
    if (options.priceCatalog !== undefined && typeof options.priceCatalog !== 'boolean')
      throw new Error(`priceCatalog must be a boolean (got ${JSON.stringify(options.priceCatalog)})`);
    if (options.prices !== undefined && (options.prices === null || typeof options.prices !== 'object'))
      throw new Error('prices must be an object of price overrides by model or provider name');
    priceBook = new PriceBook({
      catalog: options.priceCatalog ?? true,
      builtin: DEFAULT_PRICES,
      overrides: options.prices ?? {},
      defaultModels: { ...DEFAULT_MODELS, ...(options.defaultModels ?? {}) },
      unknownModels: policy,
    });
  } catch (e) {
    fail((e as Error).message);
  }

  return {
    catalog,
    knownProviders: new Set([
      ...Object.keys(DEFAULT_PROVIDER_PATTERNS),
      ...Object.keys(options.providerPatterns ?? {}),
      ...Object.keys(DEFAULT_MODELS),
      ...Object.keys(options.defaultModels ?? {}),
      ...Object.keys(DEFAULT_PRICES),
      ...Object.values(groups).flat(),
    ]),
    providerGroups: groups,
    defaultPlan,
    plans: new PlanResolver(catalog, defaultPlan),
    resolvePlan: planLookup ? (id) => planLookup.lookup(id) : () => defaultPlan,
    userId: userIdFn,
    trustedUserHeader: options.trustedUserHeader?.toLowerCase(),
    anonymous,
    anonymousUserId,
    detector,
    enforcementTimeoutMs: positiveInt(options.enforcementTimeoutMs, 'enforcementTimeoutMs', 250),
    emergencyFailOpen: options.emergencyFailOpen ?? envFailOpen(),
    recordAllRequests: options.recordAllRequests ?? false,
    extractor: new UsageExtractor(
      positiveInt(options.defaultMaxOutputTokens, 'defaultMaxOutputTokens', 1024, 0),
    ),
    priceBook,
    storage,
    durableIntent: storage.durableIntent,
    onAlert,
    webhooks: resolveWebhooks(options),
    metrics: resolveMetrics(options.metrics),
    clock,
    clockSkew,
  };
}

function resolveWebhooks(options: UsageMonitoringModuleOptions): ResolvedWebhook[] {
  const a = options.alerts;
  if (a === undefined) return [];
  if (typeof a !== 'object' || a === null)
    fail(`alerts must be an object, e.g. { webhook: { url, secret } } (got ${shown(a)})`);
  const hooks = a.webhook;
  if (hooks === undefined) return [];
  const list = Array.isArray(hooks) ? hooks : [hooks];
  const seen = new Set<string>();
  return list.map((h, i) => {
    const at = Array.isArray(hooks) ? `alerts.webhook[${i}]` : 'alerts.webhook';
    if (typeof h !== 'object' || h === null) fail(`${at} must be { url, secret } (got ${shown(h)})`);
    let url: URL;
    try {
      url = new URL(String(h.url));
    } catch {
      fail(`${at}.url must be an absolute http: or https: URL (got ${shown(h.url)})`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      fail(`${at}.url must be an http: or https: URL (got the protocol ${url.protocol})`);
    if (seen.has(url.href)) fail(`${at}.url is given twice (${url.origin}…): each endpoint once`);
    seen.add(url.href);
    if (typeof h.secret !== 'string' || h.secret.length < 16)
      fail(
        `${at}.secret must be a string of at least 16 characters (the key the receiver checks signatures with)`,
      );
    const retry = h.retry ?? {};
    if (typeof retry !== 'object' || retry === null)
      fail(`${at}.retry must be an object (got ${shown(retry)})`);
    const initialDelayMs = positiveInt(retry.initialDelayMs, `${at}.retry.initialDelayMs`, 1000);
    const maxDelayMs = positiveInt(retry.maxDelayMs, `${at}.retry.maxDelayMs`, 300_000);
    if (maxDelayMs < initialDelayMs) fail(`${at}.retry.maxDelayMs must be ≥ retry.initialDelayMs`);
    return {
      url: url.href,
      secret: h.secret,
      timeoutMs: positiveInt(h.timeoutMs, `${at}.timeoutMs`, 10_000),
      initialDelayMs,
      maxDelayMs,
      maxAttempts: positiveInt(retry.maxAttempts, `${at}.retry.maxAttempts`, 20),
    };
  });
}

function resolveMetrics(m: UsageMonitoringModuleOptions['metrics']): NormalizedUsageOptions['metrics'] {
  if (m === false) return false;
  if (m === undefined) return { meterProvider: undefined, userIds: false };
  if (typeof m !== 'object' || m === null)
    fail(`metrics must be false or { meterProvider?, userIds? } (got ${shown(m)})`);
  const provider = m.meterProvider as { getMeter?: unknown } | undefined;
  if (provider !== undefined && typeof provider?.getMeter !== 'function')
    fail('metrics.meterProvider must be an OpenTelemetry MeterProvider (an object with getMeter())');
  const userIds = checked(() => oneOf(m.userIds ?? false, [true, false] as const, 'metrics.userIds'));
  return { meterProvider: m.meterProvider, userIds };
}

function resolveStorage(options: UsageMonitoringModuleOptions): ResolvedStorage {
  const s = options.storage ?? {};
  if (typeof s !== 'object' || s === null) fail("storage must be an object, e.g. { dataDir: './data' }");
  if (s.type === 'shared') return resolveShared(s);
  checked(() =>
    oneOf((s as { type?: unknown }).type ?? 'sqlite', ['sqlite', 'shared'] as const, 'storage.type'),
  );
  const dataDir = s.dataDir ?? './data';
  if (typeof dataDir !== 'string' || dataDir.trim() === '') fail('storage.dataDir must be a non-empty path');
  const synchronous = checked(() =>
    oneOf(s.synchronous ?? 'normal', ['normal', 'full'] as const, 'storage.synchronous'),
  );
  const driver = checked(() =>
    oneOf(s.driver ?? 'sqlite3', ['sqlite3', 'better-sqlite3'] as const, 'storage.driver'),
  );
  // An optional package: missing, it fails here, at start-up, rather than on a user's first request.
  if (driver === 'better-sqlite3') loadBetterSqlite3();
  return {
    type: 'sqlite',
    dataDir,
    maxOpenDataSources: positiveInt(s.maxOpenDataSources, 'storage.maxOpenDataSources', 64),
    openTimeoutMs: positiveInt(s.openTimeoutMs, 'storage.openTimeoutMs', 5000),
    busyTimeoutMs: positiveInt(s.busyTimeoutMs, 'storage.busyTimeoutMs', 2000, 0),
    synchronous,
    driver,
    journal: resolveJournal(s.journal),
    reservationTtlMs: positiveInt(s.reservationTtlMs, 'storage.reservationTtlMs', 900_000),
    durableIntent: checked(() =>
      oneOf(s.durableIntent ?? DURABLE_INTENT_DEFAULT.sqlite, [true, false], 'storage.durableIntent'),
    ),
  };
}

/**
 * `storage.durableIntent` by default, per store, from the bench (README, "Durable intent"): within noise on
 * the per-user store; 0.92–0.97× of the throughput without it on the shared store (a larger reservation row).
 */
const DURABLE_INTENT_DEFAULT = { sqlite: true, shared: false } as const;

/** Each user's journaled rows are applied to its file after this long, by default. */
const JOURNAL_APPLY_DELAY_MS = 1000;
/** `storage.journal.maxUsersInMemory` by default. */
const JOURNAL_USERS_IN_MEMORY = 100_000;

function resolveJournal(j: SqliteStorageOptions['journal']): {
  applyDelayMs: number;
  maxUsersInMemory: number;
} {
  if (j === undefined || j === true)
    return { applyDelayMs: JOURNAL_APPLY_DELAY_MS, maxUsersInMemory: JOURNAL_USERS_IN_MEMORY };
  if ((j as unknown) === false)
    fail(
      'storage.journal: false is no longer supported: the journal is how the per-user store writes (the direct per-user commit was removed; one write path, the one that carries many users). Remove the option, or tune it with { applyDelayMs, maxUsersInMemory }',
    );
  if (typeof j !== 'object' || j === null || Array.isArray(j))
    fail(`storage.journal must be { applyDelayMs, maxUsersInMemory } (got ${JSON.stringify(j)})`);
  const applyDelayMs = positiveInt(j.applyDelayMs, 'storage.journal.applyDelayMs', JOURNAL_APPLY_DELAY_MS, 0);
  if (applyDelayMs > 60_000) fail(`storage.journal.applyDelayMs must be ≤ 60000 (got ${applyDelayMs})`);
  const maxUsersInMemory = positiveInt(
    j.maxUsersInMemory,
    'storage.journal.maxUsersInMemory',
    JOURNAL_USERS_IN_MEMORY,
    0,
  );
  return { applyDelayMs, maxUsersInMemory };
}

function resolveShared(s: SharedStorageOptions): ResolvedSharedStorage {
  const ds = s.dataSource as unknown;
  const isDataSource = ds instanceof DataSource;
  if (!isDataSource) {
    if (!ds || typeof ds !== 'object')
      fail(
        "storage.dataSource must be TypeORM DataSourceOptions or a DataSource when storage.type is 'shared'",
      );
    const type = (ds as { type?: unknown }).type;
    if (type !== 'postgres') fail(`storage.dataSource.type must be 'postgres' (got ${JSON.stringify(type)})`);
  } else if (ds.options.type !== 'postgres') {
    fail(`storage.dataSource must be a PostgreSQL DataSource (got ${JSON.stringify(ds.options.type)})`);
  }
  const t = s.timeouts ?? {};
  const reservationTtlMs = positiveInt(s.reservationTtlMs, 'storage.reservationTtlMs', 900_000);
  const durableIntent = checked(() =>
    oneOf(s.durableIntent ?? DURABLE_INTENT_DEFAULT.shared, [true, false], 'storage.durableIntent'),
  );
  return {
    type: 'shared',
    dataSource: s.dataSource,
    migrationsRun: s.migrationsRun ?? !isDataSource,
    poolSize: positiveInt(s.poolSize, 'storage.poolSize', 10),
    connectMs: positiveInt(t.connectMs, 'storage.timeouts.connectMs', 1000),
    statementMs: positiveInt(t.statementMs, 'storage.timeouts.statementMs', 2000),
    lockMs: positiveInt(t.lockMs, 'storage.timeouts.lockMs', 1000),
    queueTimeoutMs: positiveInt(s.queueTimeoutMs, 'storage.queueTimeoutMs', 5000),
    reservationTtlMs,
    durableIntent,
    // Leases by default; not with durable intent unless asked for (lease-admitted requests have no row).
    leases: resolveLeases(s.leases ?? !durableIntent, reservationTtlMs),
  };
}

/** `storage.leases` by default (and `true`): blocks of 64 requests, held at most 1 s, 8 blocks of headroom. */
const LEASE_DEFAULTS = { requests: 64, holdMs: 1000, headroom: 8 } as const;

function resolveLeases(value: unknown, reservationTtlMs: number): ResolvedLeases | null {
  if (value === false) return null;
  const l = value === true ? {} : (value as SharedLeaseOptions);
  if (!l || typeof l !== 'object' || Array.isArray(l))
    fail(
      `storage.leases must be true, false or { requests, holdMs, headroom } (got ${JSON.stringify(value)})`,
    );
  const resolved = {
    requests: positiveInt(l.requests, 'storage.leases.requests', LEASE_DEFAULTS.requests, 2),
    // A short reservationTtlMs shortens the default hold with it (the rule below), instead of refusing.
    holdMs: positiveInt(
      l.holdMs,
      'storage.leases.holdMs',
      Math.max(10, Math.min(LEASE_DEFAULTS.holdMs, Math.floor(reservationTtlMs / 2))),
      10,
    ),
    headroom: positiveInt(l.headroom, 'storage.leases.headroom', LEASE_DEFAULTS.headroom, 2),
  };
  // The sweeper releases a lease row after reservationTtlMs: a live instance must be done admitting by then.
  if (resolved.holdMs * 2 > reservationTtlMs)
    fail(
      `storage.leases.holdMs (${resolved.holdMs}) must be at most half of storage.reservationTtlMs (${reservationTtlMs})`,
    );
  return resolved;
}
