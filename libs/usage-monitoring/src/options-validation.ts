import type { Limit, Plan } from './plans/plan.interface';
import type { SharedStorageOptions } from './storage/shared/shared-store.options';
import type { SqliteStorageOptions, UsageMonitoringModuleOptions } from './usage-monitoring.options';

/**
 * Every key each options object may have. `Record<keyof T, true>` makes the compiler keep these lists
 * equal to the interfaces: a key added to an interface and not here fails the build.
 */
const TOP_KEYS: Record<keyof UsageMonitoringModuleOptions, true> = {
  plans: true,
  defaultPlan: true,
  plan: true,
  planCacheMs: true,
  planTimeoutMs: true,
  providerGroups: true,
  storage: true,
  userId: true,
  trustedUserHeader: true,
  anonymous: true,
  anonymousUserId: true,
  providerPatterns: true,
  detectProviders: true,
  ignoredPathPrefixes: true,
  enforcementTimeoutMs: true,
  emergencyFailOpen: true,
  recordAllRequests: true,
  defaultMaxOutputTokens: true,
  prices: true,
  priceCatalog: true,
  unknownModels: true,
  defaultModels: true,
  onAlert: true,
  alerts: true,
  metrics: true,
  clock: true,
};
const SQLITE_KEYS: Record<keyof SqliteStorageOptions, true> = {
  type: true,
  dataDir: true,
  maxOpenDataSources: true,
  openTimeoutMs: true,
  busyTimeoutMs: true,
  synchronous: true,
  driver: true,
  journal: true,
  reservationTtlMs: true,
  durableIntent: true,
};
const SHARED_KEYS: Record<keyof SharedStorageOptions, true> = {
  type: true,
  dataSource: true,
  migrationsRun: true,
  poolSize: true,
  timeouts: true,
  queueTimeoutMs: true,
  reservationTtlMs: true,
  durableIntent: true,
  leases: true,
};
const PLAN_KEYS: Record<keyof Plan, true> = { name: true, limits: true };
const LIMIT_KEYS: Record<keyof Limit, true> = {
  metric: true,
  scope: true,
  period: true,
  max: true,
  mode: true,
};
const NESTED_KEYS = {
  'storage.journal': ['applyDelayMs', 'maxUsersInMemory'],
  'storage.timeouts': ['connectMs', 'statementMs', 'lockMs'],
  'storage.leases': ['requests', 'holdMs', 'headroom'],
} as const;

/**
 * Refuses keys no option has, at every level the library reads (a typo would otherwise leave its
 * setting at the default silently: `storage: { dataDirr }` would write to `./data`). The same check
 * runs for `forRoot` and every `forRootAsync` form, since all of them end up here.
 */
export function checkOptionKeys(options: UsageMonitoringModuleOptions): void {
  checkKeys(options, Object.keys(TOP_KEYS), '');
  const storage = options.storage as Record<string, unknown> | undefined;
  if (isObject(storage)) {
    checkKeys(storage, Object.keys(storage.type === 'shared' ? SHARED_KEYS : SQLITE_KEYS), 'storage.');
    for (const [path, keys] of Object.entries(NESTED_KEYS)) {
      const value = storage[path.slice('storage.'.length)];
      if (isObject(value)) checkKeys(value, keys, `${path}.`);
    }
  }
  if (isObject(options.metrics)) checkKeys(options.metrics, ['meterProvider', 'userIds'], 'metrics.');
  if (isObject(options.alerts)) {
    checkKeys(options.alerts, ['webhook'], 'alerts.');
    const hooks = options.alerts.webhook;
    const list = Array.isArray(hooks) ? hooks : hooks === undefined ? [] : [hooks];
    list.forEach((h, i) => {
      const at = Array.isArray(hooks) ? `alerts.webhook[${i}].` : 'alerts.webhook.';
      if (!isObject(h)) return;
      checkKeys(h, ['url', 'secret', 'timeoutMs', 'retry'], at);
      if (isObject(h.retry))
        checkKeys(h.retry, ['initialDelayMs', 'maxDelayMs', 'maxAttempts'], `${at}retry.`);
    });
  }
  if (Array.isArray(options.plans)) {
    options.plans.forEach((plan, i) => {
      if (!isObject(plan)) return;
      checkKeys(plan, Object.keys(PLAN_KEYS), `plans[${i}].`);
      if (Array.isArray(plan.limits))
        plan.limits.forEach((limit, j) => {
          if (isObject(limit)) checkKeys(limit, Object.keys(LIMIT_KEYS), `plans[${i}].limits[${j}].`);
        });
    });
  }
}

/** Throws for the first key of `value` that is not in `allowed`, suggesting the closest one. */
export function checkKeys(value: object, allowed: readonly string[], prefix: string): void {
  for (const key of Object.keys(value)) {
    if (allowed.includes(key)) continue;
    const hint = closest(key, allowed);
    throw new Error(
      `${prefix}${key} is not an option${hint ? ` (did you mean ${prefix}${hint}?)` : ''}; ` +
        `expected one of ${allowed.join(', ')}`,
    );
  }
}

/** `value` when it is one of `allowed`; otherwise an error naming the option, the choices and the nearest. */
export function oneOf<T extends string | boolean>(value: unknown, allowed: readonly T[], name: string): T {
  if ((allowed as readonly unknown[]).includes(value)) return value as T;
  const hint = typeof value === 'string' ? closest(value, allowed.map(String)) : undefined;
  const choices = allowed.map((a) => (typeof a === 'string' ? `'${a}'` : String(a))).join(', ');
  throw new Error(
    `${name} must be one of ${choices} (got ${shown(value)}${hint ? `; did you mean '${hint}'?` : ''})`,
  );
}

/** The candidate nearest to `word` by edit distance (case-insensitive), when near enough to be a typo. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(w.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(w, c.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

/** Levenshtein distance. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = row;
  }
  return previous[b.length];
}

/**
 * A value as an error message shows it. Numbers from configuration (`process.env`, `ConfigService`) are
 * strings; they are refused, not converted, and the message says so.
 */
export function shown(value: unknown): string {
  if (typeof value === 'string' && value.trim() !== '' && Number.isFinite(Number(value))) {
    return `the string ${JSON.stringify(value)}: convert numbers read from configuration with Number()`;
  }
  return value === undefined
    ? 'undefined'
    : typeof value === 'function'
      ? 'a function'
      : JSON.stringify(value);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
