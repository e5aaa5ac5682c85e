import type { CanActivate, Type } from '@nestjs/common';
import type { MeterProvider } from '@opentelemetry/api';
import type { Limit, Plan, PlanAssignment } from './plans/plan.interface';
import type { PriceOverride } from './pricing/price.interface';
import type { UsageAlert } from './alerts/usage-alert.interface';
import type { SharedStorageOptions } from './storage/shared/shared-store.options';

/** Per-user SQLite storage (the default): one database file per user under `dataDir`. */
export interface SqliteStorageOptions {
  /** @default 'sqlite' */
  type?: 'sqlite';
  /**
   * Folder that holds one SQLite file per user. Created if missing. One live process owns it
   * (a lock file refuses a second one; a lock left by a dead process is taken over).
   * @default './data'
   */
  dataDir?: string;
  /**
   * How many user databases may be open at once (LRU; a database with a request in flight is never closed).
   * @default 64
   */
  maxOpenDataSources?: number;
  /**
   * How long a request may wait for its user's database to open before the guard answers 503: a user's
   * first request since start-up opens (or creates) their file, behind the other users' opens when many
   * arrive together (a few milliseconds each). Every other request is bound by `enforcementTimeoutMs`; a
   * value below it changes nothing.
   * @default 5000
   */
  openTimeoutMs?: number;
  /**
   * SQLite busy timeout in milliseconds.
   * @default 2000
   */
  busyTimeoutMs?: number;
  /**
   * `PRAGMA synchronous`. `'normal'` (WAL) survives a process crash (SIGKILL) without losing a committed
   * transaction; only an OS crash or power loss may drop the last commits. `'full'` also survives those,
   * at one fsync per group commit.
   * @default 'normal'
   */
  synchronous?: 'normal' | 'full';
  /**
   * The SQLite driver. `'sqlite3'` runs every statement on libuv's thread pool. `'better-sqlite3'` (an
   * optional package: `npm install better-sqlite3`) runs them on the main thread, which saves the hop
   * between threads on every group commit but blocks the event loop while a commit runs; its busy wait
   * would block too, so `busyTimeoutMs` is capped at 20 ms with it (a longer lock fails the commit, which
   * is retried with backoff while the user gets 503). Same files, same schema: either driver opens them.
   * @default 'sqlite3'
   */
  driver?: 'sqlite3' | 'better-sqlite3';
  /**
   * How settlements are written (one path, always on). Every user's settlements of a turn commit together
   * to one journal file inside `dataDir` (`.usage-journal.sqlite`) before their responses are released,
   * so a thousand users each sending a request cost one commit, not a thousand; each user's rows then move
   * to the user's own file in one commit `applyDelayMs` later, or 10 ms per user whose rows are
   * waiting when that is longer (1,000 users active at once: about 10 s; at most 60 s), so that many users
   * cost about a hundred user-file commits a second (at once when the user's database is closed or evicted,
   * and at start-up for rows a crash left in the journal). Counters and enforcement are exact; a user's file
   * lags the journal by that delay.
   *
   * A user whose database the LRU closes stays in memory with its counters (up to `maxUsersInMemory`
   * users, least recently used dropped first, never one with rows still to apply): coming back costs no
   * database open, and its rows reach its file in the background, one open–commit–close per user after the
   * same delay as an open user's, within `maxOpenDataSources`. `0` turns that off.
   *
   * (Earlier versions made it opt-in, `journal: true`; `true` is still accepted and means the defaults. The
   * direct per-user commit it replaced, `journal: false`, was removed: it was a little faster for one hot
   * user and far slower for many, and two write paths were one too many.)
   * @default { applyDelayMs: 1000, maxUsersInMemory: 100000 }
   */
  journal?: { applyDelayMs?: number; maxUsersInMemory?: number } | true;
  /**
   * A reservation not settled after this long (a handler that never completed, a stalled upstream stream)
   * is released, so that it stops holding quota and its user's database slot; counted in
   * `UsageService.enforcementStats().releasedByTtl` and logged. A settlement arriving later is still recorded.
   * @default 900000 (15 minutes)
   */
  reservationTtlMs?: number;
  /**
   * Durable intent: each admitted request's charge at its estimate is written before its handler runs (to
   * the append-only `.usage-intents.<n>.log` in `dataDir`: one write for all the requests admitted in one
   * turn of the event loop, on the main thread; with `synchronous: 'full'`, also an `fdatasync`), and dropped
   * once it settles. If the process dies while a request runs (its upstream call may still be billed to
   * you), the next start charges that request once, at its estimate, with outcome `interrupted`. A metered
   * response is then released without waiting for its ledger row's commit (a crash in between charges it
   * the same way), so a request waits for no commit at all. A failed write refuses the request (503).
   * @default true
   */
  durableIntent?: boolean;
}

/** Where usage lives: one SQLite file per user (the default), or a shared PostgreSQL database. */
export type StorageOptions = SqliteStorageOptions | SharedStorageOptions;

/** Anything with headers and an optional authenticated principal; Express and Fastify requests both fit. */
export interface UsageRequest {
  /** The authenticated principal your authentication set (`request.user`). */
  user?: unknown;
  /** Request headers, lower-case names. */
  headers: Record<string, string | string[] | undefined>;
  /** Whatever else the platform's request object carries. */
  [key: string]: unknown;
}

/** Options of `UsageMonitoringModule.forRoot()` / `forRootAsync()`. Only `plans` is required. */
export interface UsageMonitoringModuleOptions {
  /**
   * The plan catalog. Limits are data: an absent limit is unlimited, `max: 0` allows nothing.
   * @example [{ name: 'free', limits: [{ metric: 'calls', scope: 'ai_text', period: 'month', max: 50 }] }]
   */
  plans: Plan[];
  /**
   * Plan used when `plan(userId)` answers nothing.
   * @default 'free' when the catalog has it, else the first plan
   */
  defaultPlan?: string;
  /**
   * The user's plan (your billing system is the source of truth). May be async.
   * @default () => defaultPlan
   */
  plan?: (userId: string) => PlanAssignment | undefined | Promise<PlanAssignment | undefined>;
  /**
   * How long an answer of `plan(userId)` is kept (per user; `0`: ask on every metered request). A plan
   * change reaches enforcement within this time.
   * @default 60000
   */
  planCacheMs?: number;
  /**
   * How long a metered request waits for `plan(userId)`: then it is answered 503, counted as
   * `plan_lookup_failed` (apart from the store's `enforcementTimeoutMs`).
   * @default 1000
   */
  planTimeoutMs?: number;
  /**
   * Named groups of providers that share a counter when a limit's `scope` names the group.
   * @default { ai_text: ['gemini', 'openai', 'anthropic', 'mistral'] }
   */
  providerGroups?: Record<string, string[]>;
  /**
   * Where usage lives.
   * @default { type: 'sqlite', dataDir: './data' }
   */
  storage?: StorageOptions;
  /**
   * Resolves the user from the authenticated principal. Client headers are never consulted by default.
   * @default (req) => req.user?.id ?? req.user?.sub
   */
  userId?: (request: UsageRequest) => string | undefined;
  /**
   * Trust this one request header as the user id (only behind a gateway that sets it and strips
   * client copies). Used when `userId` answers nothing.
   * @default undefined (no header is trusted)
   * @example 'x-user-id'
   */
  trustedUserHeader?: string;
  /**
   * A metered request without a user: `'deny'` answers 401; `'allow'` charges it to one shared
   * anonymous user (`anonymousUserId`) on the default plan.
   * @default 'deny'
   */
  anonymous?: 'deny' | 'allow';
  /** @default '__anonymous__' */
  anonymousUserId?: string;
  /**
   * Provider detection for routes without `@Metered`: a regular expression per provider that must match
   * one whole segment of the request's path, case-insensitively (`'openai|gpt'` meters `/api/OpenAI/chat`
   * and `/gpt/complete`, not `/settings/gpt-preferences`). Merged over the defaults; set a provider to
   * `null` to drop its default pattern.
   * @default gemini `gemini|google-?(gen)?ai`, openai `openai|chatgpt|gpt`, anthropic `anthropic|claude`,
   * mistral `mistral|mistralai`, tavily `tavily`, serper `serper`, metaphor `metaphor|exa`, firecrawl `firecrawl`
   */
  providerPatterns?: Record<string, string | RegExp | null>;
  /**
   * What provider detection looks at: `'path'`; `'path-and-user-agent'` also matches the patterns anywhere
   * in the User-Agent when no path segment matched (a header the client controls: only behind a gateway
   * that sets it); `false`: no detection, only `@Metered` routes are metered.
   * @default 'path'
   */
  detectProviders?: 'path' | 'path-and-user-agent' | false;
  /**
   * Path prefixes never metered by detection (compared case-insensitively).
   * @default ['/api/onboarding/', '/api/subscription/']
   */
  ignoredPathPrefixes?: string[];
  /**
   * How long the guard waits for the store before answering 503.
   * @default 250
   */
  enforcementTimeoutMs?: number;
  /**
   * Let metered requests through (counted, logged at most once a minute) when the store is unavailable.
   * @default true when the environment variable USAGE_LIMITS_EMERGENCY_FAIL_OPEN is 1, true, yes or on (read at start-up)
   */
  emergencyFailOpen?: boolean;
  /**
   * Also write an `api_requests` row for unmetered requests of identified users (opens their database).
   * @default false
   */
  recordAllRequests?: boolean;
  /**
   * Output tokens reserved when a request names no `max_tokens` / `max_output_tokens`.
   * @default 1024
   */
  defaultMaxOutputTokens?: number;
  /**
   * Price overrides and additions, by model or provider name (USD).
   * @example { 'gpt-4o-mini': { inputPerMTok: 0.15, outputPerMTok: 0.6 }, tavily: { perSearch: 0.001 } }
   */
  prices?: Record<string, PriceOverride>;
  /**
   * Token prices from the bundled `@pydantic/genai-prices` catalog (offline, its package version recorded
   * on every ledger row it priced). `false`: only the `prices` option and this library's per-request table.
   * @default true
   */
  priceCatalog?: boolean;
  /**
   * A model the price book does not know (one released after the bundled catalog): `'highest-price'`
   * prices it at the highest rates of any known model of its provider, so it is never cheaper than a known
   * one (its ledger rows' price version reads `highest:<provider>:…`); `'allow-unpriced'` records its
   * tokens at no token cost (both warn once per model); `'deny'` refuses requests naming it with 400
   * `USAGE_UNKNOWN_MODEL` before they reach the provider. Add the model to `prices` to charge its own price.
   * @default 'highest-price'
   */
  unknownModels?: 'highest-price' | 'deny' | 'allow-unpriced';
  /**
   * Model assumed when a request names none, by provider.
   * @default { gemini: 'gemini-2.5-flash', openai: 'gpt-4o-mini', anthropic: 'claude-3.5-sonnet', mistral: 'mistral-small-latest' }
   */
  defaultModels?: Record<string, string>;
  /**
   * Called once per user, period, limit and threshold (80/90/100 %) after the usage that crossed it committed.
   * The same alerts are also on `UsageAlerts.alerts$`.
   */
  onAlert?: (alert: UsageAlert) => void;
  /**
   * Where alerts are delivered besides `onAlert` and `UsageAlerts.alerts$` (README: Alert webhooks).
   */
  alerts?: UsageAlertsOptions;
  /**
   * Metrics through `@opentelemetry/api` (README: Metrics): `gen_ai.client.token.usage` in the GenAI
   * semantic conventions and the library's own `usage_monitoring.*`. They reach the meter provider the
   * app registers (the OpenTelemetry SDK's, set before the app is created) or `meterProvider`; with none
   * they cost nothing. No user ids unless `userIds: true` (an `enduser.id` attribute on cost and tokens:
   * one series per user). `false` creates no instruments.
   * @default { userIds: false }, on the global meter provider
   */
  metrics?: false | UsageMetricsOptions;
  /**
   * Milliseconds since the epoch. Tests inject a clock to roll periods.
   * @default Date.now; in the shared mode, the database's clock (sampled every 30 s), so that instances
   * with skewed clocks agree on periods
   */
  clock?: () => number;
}

/** `alerts` of the module's options. */
export interface UsageAlertsOptions {
  /**
   * POST each alert as JSON to these endpoints: written to an outbox in the same commit as the usage that
   * crossed the threshold, signed (HMAC-SHA256 of the raw body with `secret`), retried with exponential
   * backoff and jitter until a 2xx answer, in order per user; after `retry.maxAttempts` an alert is parked
   * (kept, counted, logged) and the user's next alert goes.
   */
  webhook?: AlertWebhookOptions | AlertWebhookOptions[];
}

/** One alert webhook endpoint. */
export interface AlertWebhookOptions {
  /** `http:` or `https:` URL. */
  url: string;
  /** Signs each body (`X-Usage-Signature: sha256=<hex HMAC-SHA256 of the raw body>`); at least 16 characters. */
  secret: string;
  /**
   * How long one delivery waits for the answer (ms).
   * @default 10000
   */
  timeoutMs?: number;
  /**
   * Backoff between attempts: `initialDelayMs` doubling up to `maxDelayMs`, each with full jitter; parked
   * after `maxAttempts` failed attempts.
   * @default { initialDelayMs: 1000, maxDelayMs: 300000, maxAttempts: 20 }
   */
  retry?: { initialDelayMs?: number; maxDelayMs?: number; maxAttempts?: number };
}

/** `metrics` of the module's options. */
export interface UsageMetricsOptions {
  /** Where the instruments are created; by default `metrics.getMeterProvider()` of `@opentelemetry/api`. */
  meterProvider?: MeterProvider;
  /**
   * Add the user id (`enduser.id`) to the cost and token metrics: one series per user, for small user counts.
   * @default false
   */
  userIds?: boolean;
}

/** Module-shape extras of `forRoot` / `forRootAsync`. */
export interface UsageMonitoringModuleExtras {
  /** @default true */
  isGlobal?: boolean;
  /**
   * Register `GET /health/usage`.
   * @default true
   */
  healthController?: boolean;
  /**
   * Mount the admin API (`UsageAdminController`: a user's usage, overrides and history; grants, resets and
   * limit changes) at `path`, behind `guards` — the host's own, which must let only admins through. Start-up
   * fails without one. The actor each change records is the admin request's principal (the `userId`
   * option). Off by default; `UsageAdminService` is always there for the app's own code.
   */
  adminController?: {
    /** At least one guard of the host's that lets only admins through. */
    guards: (Type<CanActivate> | CanActivate)[];
    /** @default 'usage/admin' */
    path?: string;
  };
  /**
   * Mount the usage dashboard: server-rendered HTML, no script, under a strict Content-Security-Policy.
   * `GET <path>` shows the signed-in user (the `userId` option's principal) their own limits, cost per day,
   * latest requests and alerts, behind `guards` (the host's; start-up fails without one unless `public:
   * true`). With `adminController` set, `GET <path>/admin` is the operator's view (enforcement health, the
   * last hour's decisions, top spenders, users over 80 %) and `GET <path>/admin/users/:userId` any user's
   * view, behind the admin guards. Off by default.
   */
  dashboard?: {
    /** The host's guards for the user's view (e.g. its authentication guard). */
    guards?: (Type<CanActivate> | CanActivate)[];
    /** No guard of the dashboard's own: only when a global guard already authenticates every request. */
    public?: boolean;
    /** @default 'usage/dashboard' */
    path?: string;
  };
}

export type { Limit, Plan, PlanAssignment };
