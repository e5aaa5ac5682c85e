import { Logger } from '@nestjs/common';
import { LRUCache } from 'lru-cache';
import { DataSource } from 'typeorm';
import type { UsageAlert } from '../../alerts/usage-alert.interface';
import { ThrottledLogger } from '../../enforcement/throttled-logger';
import { ALERT_THRESHOLDS, type EnforcementFailureReason } from '../../usage-monitoring.constants';
import { UsageStoreError } from '../usage-store.error';
import type {
  ApiRequestRecord,
  CounterKey,
  CounterSnapshot,
  LimitCharge,
  ReserveRequest,
  ReserveResult,
  Reservation,
  Settlement,
  SettleResult,
  StoreHealth,
  UsageStore,
} from '../usage-store.interface';
import * as SQL from './postgres-statements';
import { createSharedDataSource, migrate, poolOf, type PgPool } from './shared-data-source';
import type { ResolvedSharedStorage } from './shared-store.options';
import { sharedUserId } from './shared-user-id';

/** Shared with the module's clock: the database clock minus this process's, sampled periodically. */
export interface ClockSkew {
  offsetMs: number;
}

interface LockedCounter {
  period_key: string;
  scope: string;
  metric: string;
  used: number | string;
  reserved: number | string;
}

const CLOCK_SAMPLE_MS = 30_000;

const actualOf = (s: Settlement, metric: LimitCharge['metric']) =>
  metric === 'calls' ? s.actual.calls : metric === 'tokens' ? s.actual.tokens : s.actual.costMicros;

/**
 * Shared-database store (PostgreSQL): several app instances enforce one set of limits exactly.
 * Admission is one locking, all-or-none statement against the counter rows; settlement one statement
 * that moves amounts from `reserved` to `used` and appends the ledger row, idempotently. Reservations
 * are rows too, so those of an instance that died are released by a sweeper after `reservationTtlMs`.
 */
export class SharedPostgresStore implements UsageStore {
  private readonly logger = new Logger('UsageMonitoring');
  private readonly log = new ThrottledLogger(this.logger);
  private dataSource: DataSource | undefined;
  private pool!: PgPool;
  private readonly owned: boolean;
  /** Counter rows known to exist, so steady-state admission is a single statement. */
  private readonly knownCounters = new LRUCache<string, true>({ max: 100_000 });
  private timers: NodeJS.Timeout[] = [];

  constructor(
    private readonly options: ResolvedSharedStorage,
    private readonly clock: () => number,
    private readonly skew?: ClockSkew,
  ) {
    this.owned = !(options.dataSource instanceof DataSource);
  }

  async init(): Promise<void> {
    const ds =
      this.options.dataSource instanceof DataSource
        ? this.options.dataSource
        : createSharedDataSource(this.options.dataSource, this.options);
    try {
      if (!ds.isInitialized) await ds.initialize();
    } catch (e) {
      throw new Error(
        `storage.dataSource: cannot connect to the shared usage database: ${(e as Error).message}`,
      );
    }
    this.dataSource = ds;
    this.pool = poolOf(ds);
    if (this.options.migrationsRun) await migrate(ds);
    try {
      await this.pool.query('SELECT 1 FROM usage_counters LIMIT 0');
      await this.pool.query('SELECT 1 FROM usage_reservations LIMIT 0');
    } catch {
      throw new Error(
        'storage.dataSource: the usage tables are missing; add USAGE_MIGRATIONS to your DataSource and run them, or set storage.migrationsRun',
      );
    }
    await this.sampleClock();
    const sweep = setInterval(
      () => void this.sweep(),
      Math.min(60_000, Math.max(1_000, this.options.reservationTtlMs / 4)),
    );
    const clock = setInterval(() => void this.sampleClock(), CLOCK_SAMPLE_MS);
    sweep.unref();
    clock.unref();
    this.timers = [sweep, clock];
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    const userId = sharedUserId(req.userId);
    const { charges } = req;
    try {
      const missing = charges.filter((c) => !this.knownCounters.has(counterCacheKey(userId, c)));
      if (missing.length) {
        await this.pool.query({ name: 'usage_ensure_counters', text: SQL.ENSURE_COUNTERS }, [
          userId,
          col(missing, 'periodKey'),
          col(missing, 'scope'),
          col(missing, 'metric'),
          req.now,
          col(missing, 'periodEnd'),
        ]);
        for (const c of missing) this.knownCounters.set(counterCacheKey(userId, c), true);
      }
      const ledgerPeriod = charges[0]?.periodKey ?? '';
      const { rows } = await this.pool.query<{ pass: boolean; state: LockedCounter[] | null }>(
        { name: 'usage_reserve', text: SQL.RESERVE },
        [
          userId,
          col(charges, 'periodKey'),
          col(charges, 'scope'),
          col(charges, 'metric'),
          col(charges, 'amount'),
          col(charges, 'max'),
          req.now,
          req.requestId,
          req.provider,
          ledgerPeriod,
          JSON.stringify(
            charges.map((c) => ({
              period_key: c.periodKey,
              scope: c.scope,
              metric: c.metric,
              amount: c.amount,
            })),
          ),
          req.now + this.options.reservationTtlMs,
        ],
      );
      const { pass, state } = rows[0];
      if (pass) {
        return {
          admitted: true,
          reservation: {
            requestId: req.requestId,
            userId: req.userId,
            provider: req.provider,
            charges,
            createdAt: req.now,
          },
        };
      }
      return { admitted: false, exceeded: firstExceeded(charges, state ?? []) };
    } catch (e) {
      throw toStoreError(e);
    }
  }

  async release(reservation: Reservation): Promise<void> {
    const { charges } = reservation;
    await this.pool.query({ name: 'usage_release', text: SQL.RELEASE }, [
      reservation.requestId,
      sharedUserId(reservation.userId),
      col(charges, 'periodKey'),
      col(charges, 'scope'),
      col(charges, 'metric'),
      col(charges, 'amount'),
    ]);
  }

  async settle(reservation: Reservation, s: Settlement): Promise<SettleResult> {
    const e = s.event;
    const userId = sharedUserId(reservation.userId);
    const { charges } = reservation;
    const actuals = charges.map((c) => actualOf(s, c.metric));
    let rows: {
      inserted: number | string;
      counters: { period_key: string; scope: string; metric: string; used: number | string }[] | null;
    }[];
    try {
      ({ rows } = await this.pool.query({ name: 'usage_settle', text: SQL.SETTLE }, [
        e.requestId,
        userId,
        e.provider,
        e.model,
        e.endpoint,
        e.method,
        e.statusCode,
        e.inputTokens,
        e.outputTokens,
        e.costMicros,
        e.responseTimeMs,
        e.requestBytes,
        e.responseBytes,
        e.userAgent,
        e.ip,
        e.searches,
        e.images,
        e.pages,
        e.estimated,
        e.outcome,
        e.periodKey,
        e.occurredAt,
        col(charges, 'periodKey'),
        col(charges, 'scope'),
        col(charges, 'metric'),
        col(charges, 'amount'),
        actuals,
      ]));
    } catch (err) {
      throw toStoreError(err);
    }
    if (Number(rows[0].inserted) === 0) return { alerts: [] };
    return { alerts: await this.alerts(reservation, charges, actuals, rows[0].counters ?? [], e.occurredAt) };
  }

  async recordRequest(r: ApiRequestRecord): Promise<void> {
    await this.pool.query({ name: 'usage_insert_request', text: SQL.INSERT_REQUEST }, [
      r.requestId,
      sharedUserId(r.userId),
      r.provider,
      r.path,
      r.method,
      r.statusCode,
      r.durationMs,
      r.occurredAt,
    ]);
  }

  async readCounters(userId: string, keys: CounterKey[]): Promise<CounterSnapshot[]> {
    const { rows } = await this.pool.query<{ used: string | number; reserved: string | number }>(
      { name: 'usage_read_counters', text: SQL.READ_COUNTERS },
      [
        sharedUserId(userId),
        keys.map((k) => k.periodKey),
        keys.map((k) => k.scope),
        keys.map((k) => k.metric),
      ],
    );
    return keys.map((k, i) => ({ ...k, used: Number(rows[i].used), reserved: Number(rows[i].reserved) }));
  }

  async health(): Promise<StoreHealth> {
    try {
      await this.pool.query('SELECT 1');
      return { up: true };
    } catch {
      return { up: false, reason: 'shared usage database unavailable' };
    }
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    if (this.owned && this.dataSource?.isInitialized) await this.dataSource.destroy();
  }

  /** Releases reservations of instances that died mid-request. Returns how many. */
  async sweep(now = this.clock()): Promise<number> {
    try {
      const { rows } = await this.pool.query<{ released: string }>(
        { name: 'usage_sweep', text: SQL.SWEEP_EXPIRED },
        [now],
      );
      const n = Number(rows[0]?.released ?? 0);
      if (n > 0) this.logger.warn(`released ${n} expired reservation(s) left by requests that never settled`);
      return n;
    } catch (e) {
      this.log.warn('sweep', `reservation sweep failed: ${(e as Error).message}`);
      return 0;
    }
  }

  private async sampleClock(): Promise<void> {
    if (!this.skew) return;
    try {
      const before = Date.now();
      const { rows } = await this.pool.query<{ now: string }>(SQL.DATABASE_NOW);
      const after = Date.now();
      this.skew.offsetMs = Number(rows[0].now) - Math.round((before + after) / 2);
    } catch {
      /* keep the last offset */
    }
  }

  private async alerts(
    reservation: Reservation,
    charges: LimitCharge[],
    actuals: number[],
    counters: { period_key: string; scope: string; metric: string; used: number | string }[],
    at: number,
  ): Promise<UsageAlert[]> {
    const out: UsageAlert[] = [];
    for (const [i, c] of charges.entries()) {
      if (c.max <= 0 || actuals[i] <= 0) continue;
      const row = counters.find(
        (r) => r.period_key === c.periodKey && r.scope === c.scope && r.metric === c.metric,
      );
      if (!row) continue;
      const after = Number(row.used);
      const before = after - actuals[i];
      for (const t of ALERT_THRESHOLDS) {
        if (!(before * 100 < t * c.max && after * 100 >= t * c.max)) continue;
        const { rows } = await this.pool.query({ name: 'usage_insert_alert', text: SQL.INSERT_ALERT }, [
          sharedUserId(reservation.userId),
          c.periodKey,
          c.limitId,
          t,
          after,
          c.max,
          at,
        ]);
        if (rows.length) {
          out.push({
            userId: reservation.userId,
            limitId: c.limitId,
            scope: c.scope,
            metric: c.metric,
            period: c.period,
            periodKey: c.periodKey,
            threshold: t,
            used: after,
            max: c.max,
            at,
          });
        }
      }
    }
    return out;
  }
}

function col<K extends keyof LimitCharge>(charges: LimitCharge[], key: K): LimitCharge[K][] {
  return charges.map((c) => c[key]);
}

function counterCacheKey(userId: string, c: LimitCharge): string {
  return `${userId}\u0001${c.periodKey}\u0001${c.scope}\u0001${c.metric}`;
}

function firstExceeded(charges: LimitCharge[], state: LockedCounter[]) {
  for (const c of charges) {
    const s = state.find((r) => r.period_key === c.periodKey && r.scope === c.scope && r.metric === c.metric);
    const used = Number(s?.used ?? 0);
    const reserved = Number(s?.reserved ?? 0);
    if (used + reserved + Math.max(c.amount, 1) > c.max) return { charge: c, used, reserved };
  }
  // Every row passed on its own: a row was missing (concurrently deleted); report the first charge.
  return { charge: charges[0], used: 0, reserved: 0 };
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  '57P01',
  '57P02',
  '57P03',
  '08000',
  '08003',
  '08006',
  '08001',
  '08004',
]);

function toStoreError(e: unknown): UsageStoreError {
  if (e instanceof UsageStoreError) return e;
  const err = e as { code?: string; message?: string };
  let reason: EnforcementFailureReason = 'operational_error';
  if (err.code === '42P01') reason = 'missing_usage_tables';
  else if (
    (err.code && CONNECTION_CODES.has(err.code)) ||
    err.code === '57014' ||
    err.code === '55P03' ||
    /timeout|terminated|connect/i.test(err.message ?? '')
  ) {
    reason = 'database_session_unavailable';
  }
  return new UsageStoreError(reason, 'shared usage store failed', { cause: e });
}
