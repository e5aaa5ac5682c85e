import { Logger } from '@nestjs/common';
import { DataSource } from 'typeorm';
import type { UsageAlert } from '../../alerts/usage-alert.interface';
import { ThrottledLogger } from '../../enforcement/throttled-logger';
import type { LimitMetric } from '../../plans/plan.interface';
import type { EnforcementFailureReason } from '../../usage-monitoring.constants';
import { admittedAs, crossedThresholds, thresholdAlert } from '../settlement';
import { UsageStoreError } from '../usage-store.error';
import {
  ADJUSTMENT_COLUMNS,
  adjustmentOf,
  overrideOf,
  type AdjustmentRow,
  type OverrideRow,
} from '../adjustment-row';
import type {
  ActualUsage,
  ApiRequestRecord,
  CounterAdjustment,
  CounterKey,
  CounterSnapshot,
  LimitCharge,
  LimitOverrideChange,
  StoredAdjustment,
  StoredOverride,
  ReserveRequest,
  ReserveResult,
  Reservation,
  Settlement,
  SettleResult,
  SpendingCounter,
  SpendingTotal,
  StoreHealth,
  UserActivity,
  UsageEventRecord,
  UsageStore,
} from '../usage-store.interface';
import * as SQL from './postgres-statements';
import {
  ACTIVITY_ALERTS_SQL,
  ACTIVITY_DAYS_SQL,
  ACTIVITY_RECENT_SQL,
  activityOf,
  pgText,
} from '../activity-queries';
import { LeaseBook } from './lease-book';
import { PgBatcher } from './pg-batcher';
import { createSharedDataSource, migrate, poolOf, type PgPool, type PgQueryable } from './shared-data-source';
import type { AlertOutbox, OutboxRow } from '../../alerts/alert-outbox';
import type { ResolvedSharedStorage } from './shared-store.options';
import { settleItemOf, settlePayload, type SettleItem } from './settle-item';
import { appUserId, sharedUserId } from './shared-user-id';
import { newRequestId } from '../../metering/request-id';

/** Shared with the module's clock: the database clock minus this process's, sampled periodically. */
export interface ClockSkew {
  offsetMs: number;
}

interface LockedCounter {
  p: string;
  sc: string;
  m: string;
  used: number | string;
  reserved: number | string;
  granted?: number | string;
  forgiven?: number | string;
}

const CLOCK_SAMPLE_MS = 30_000;
const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 2_000;

interface ReserveItem {
  id: string;
  u: string;
  provider: string;
  pk: string;
  expires: number;
  now: number;
  charges: { p: string; sc: string; m: string; a: number; x: number; e: number; sx?: number }[];
  /** Durable intent: the settlement that charges the request at its estimate if it never settles. */
  intent?: SettleItem;
}

interface ReserveRow {
  o_id: string;
  o_pass: boolean;
  o_state: LockedCounter[] | null;
}

/**
 * Finds which settlement of a committed batch crossed which threshold: each counter's value before the
 * batch is its final value minus the batch's inserted amounts; walking the batch in order from there
 * gives every request's before and after.
 */
function markAlerts(items: SettleItem[], inserted: Set<string>, counters: SettledCounter[]): void {
  // Per user, the batch's counters of that user (a few), found by their fields: no key text per charge
  // (building one per charge, twice, cost ~8 µs per request in a profile, 2026-12-07).
  const byUser = new Map<string, RunningCounter[]>();
  for (const c of counters) {
    // Thresholds are of the limit as adjusted: granted quota added, forgiven usage left out.
    const r = {
      p: c.p,
      sc: c.sc,
      m: c.m,
      value: Number(c.used) - Number(c.forgiven ?? 0),
      granted: Number(c.granted ?? 0),
    };
    const list = byUser.get(c.u);
    if (list) list.push(r);
    else byUser.set(c.u, [r]);
  }
  const find = (u: string, ch: SettleItem['charges'][number]) =>
    byUser.get(u)?.find((r) => r.p === ch.p && r.sc === ch.sc && r.m === ch.m);
  for (const item of items) {
    if (!inserted.has(item.id)) continue;
    for (const ch of item.charges) {
      const r = find(item.u, ch);
      if (r) r.value -= ch.act;
    }
  }
  for (const item of items) {
    if (!inserted.has(item.id)) continue;
    item.charges.forEach((ch, index) => {
      const r = find(item.u, ch);
      if (!r) return;
      const before = r.value;
      const after = before + ch.act;
      r.value = after;
      if (ch.act <= 0) return;
      const max = item.limits[index].max + r.granted;
      for (const threshold of crossedThresholds(before, after, max)) {
        item.alerts.push({ index, threshold, used: after, max });
      }
      const shadowMax = item.limits[index].shadowMax;
      if (shadowMax !== undefined) {
        const limit = shadowMax + r.granted;
        for (const threshold of crossedThresholds(before, after, limit))
          item.alerts.push({ index, threshold, used: after, max: limit, shadow: true });
      }
    });
  }
}

/** A counter of a settled batch, walked through the batch's settlements in order (`markAlerts`). */
interface RunningCounter {
  p: string;
  sc: string;
  m: string;
  /** Usage less forgiven usage, before the settlement being walked. */
  value: number;
  granted: number;
}

/** A pool client that can LISTEN (pg's `Client`). */
type ListeningClient = PgQueryable & {
  release(destroy?: boolean): void;
  on(event: 'notification', listener: (n: { channel: string; payload?: string }) => void): void;
  on(event: 'error', listener: (e: Error) => void): void;
};

/** A counter as the settle statement left it. */
interface SettledCounter {
  u: string;
  p: string;
  sc: string;
  m: string;
  used: number | string;
  granted?: number | string;
  forgiven?: number | string;
}

/** The alert a settlement's crossing of a threshold reports. */
function alertOf(userId: string, item: SettleItem, a: SettleItem['alerts'][number]): UsageAlert {
  return thresholdAlert(userId, item.limits[a.index], a.threshold, a.used, a.max, item.at, a.shadow === true);
}

/**
 * Shared-database store (PostgreSQL): several app instances enforce one set of limits exactly.
 * Admission is one locking, all-or-none statement against the counter rows; settlement one statement
 * that moves amounts from `reserved` to `used` and appends the ledger row, idempotently. Reservations
 * are rows too, so those of an instance that died are released by a sweeper after `reservationTtlMs`.
 * With `storage.leases`, a hot counter's requests are admitted in memory from blocks of quota taken the
 * same way (see `LeaseBook`); their settlement is the same statement, with no reservation row to delete.
 */
export class SharedPostgresStore implements UsageStore {
  private readonly logger = new Logger('UsageMonitoring');
  private readonly log = new ThrottledLogger(this.logger);
  private dataSource: DataSource | undefined;
  private pool!: PgPool;
  private readonly owned: boolean;
  private readonly reserveBatcher = new PgBatcher<ReserveItem, ReserveRow>((items) =>
    this.reserveBatch(items),
  );
  private readonly settleBatcher = new PgBatcher<SettleItem, boolean>((items) => this.settleBatch(items));
  /** Settlements whose batch failed: their responses were delivered; they are retried until committed. */
  private retryQueue: SettleItem[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_MIN_MS;
  private timers: NodeJS.Timeout[] = [];
  /** Whether the database has the leases table (sweeping expired leases of any instance). */
  private leaseTable = false;
  /** Whether reservation rows can carry intents (the durable-intent migration ran). */
  private intentColumn = false;
  /** Per-instance leases (`storage.leases`), or null. */
  private readonly leases: LeaseBook | null;
  /** The connection listening for override changes (`watchOverrides`), and its reconnection timer. */
  private listener: ListeningClient | undefined;
  private relisten: NodeJS.Timeout | undefined;
  private closing = false;
  /** When each admission statement in flight (a reservation batch, a lease take) was sent (`Date.now()`). */
  private readonly admissionsSentAt = new Set<{ at: number }>();
  /** When an admission statement last answered (`Date.now()`). */
  private lastAdmissionAnswerAt = 0;
  /** Resolves in the check phase of the turn it was first asked for in, for every caller of that turn (`endOfTurn`). */
  private turnEnd: Promise<void> | undefined;

  constructor(
    private readonly options: ResolvedSharedStorage,
    private readonly clock: () => number,
    private readonly skew?: ClockSkew,
    /** Told how many expired reservations each sweep released or charged (the health stats count them). */
    private readonly onReservationsReleased?: (count: number) => void,
    /** Told of each settlement batch committed: how many settlements, and how long it took (s). */
    private readonly onCommit?: (writes: number, seconds: number) => void,
    /** Alert webhook URLs: each batch's alerts go to the outbox for each, in the batch's transaction. */
    private readonly webhookUrls: readonly string[] = [],
  ) {
    this.owned = !(options.dataSource instanceof DataSource);
    this.leases = options.leases
      ? new LeaseBook(
          options.leases,
          {
            take: (items, now, headroom) => this.takeLeases(items, now, headroom),
            give: (ids) => this.returnLeases(ids),
          },
          options.reservationTtlMs,
        )
      : null;
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
    const missing = new Error(
      'storage.dataSource: the usage tables are missing; add USAGE_MIGRATIONS to your DataSource and run them, or set storage.migrationsRun',
    );
    try {
      await this.pool.query('SELECT 1 FROM usage_counters LIMIT 0');
      await this.pool.query('SELECT 1 FROM usage_reservations LIMIT 0');
    } catch {
      throw missing;
    }
    // Settling is a function since the UsageKeyedPlans migration: without it every settlement would fail.
    const { rows } = await this.pool.query<{ ok: boolean }>(
      "SELECT to_regprocedure('usage_settle_batch(json, bigint)') IS NOT NULL AS ok",
    );
    if (!rows[0].ok) throw missing;
    // Leases came with a later migration: a database without it is swept of reservations only.
    this.leaseTable = await this.pool.query('SELECT 1 FROM usage_leases LIMIT 0').then(
      () => true,
      () => false,
    );
    if (this.leases && !this.leaseTable) throw missing;
    this.intentColumn = await this.pool.query('SELECT interrupted FROM usage_reservations LIMIT 0').then(
      () => true,
      () => false,
    );
    if (this.options.durableIntent && !this.intentColumn) throw missing;
    await this.pool.query('SELECT granted, forgiven FROM usage_counters LIMIT 0').catch(() => {
      throw missing;
    });
    if (this.webhookUrls.length) {
      await this.pool.query('SELECT 1 FROM usage_alert_outbox LIMIT 0').catch(() => {
        throw missing;
      });
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
    this.leases?.start(this.clock);
  }

  /**
   * `queueTimeoutMs` for an admission in line rather than stalled. Stalled: an admission statement has been
   * in flight for about the whole span since `since` (nine tenths of it: the rest is the turn the admission
   * was queued in) and no admission statement answered in it: the database has not answered in all that
   * time. In line: the statements in flight were sent later (it waited behind earlier ones, which answered:
   * each batch goes once the one before it has), others answered meanwhile (the reservation and lease
   * batches take turns), or none is in flight (it is queued behind this process's own backlog, e.g. a burst
   * being parsed).
   */
  waitTimeoutMs(_userId: string, since: number): number | undefined {
    const now = Date.now();
    const quiet = (now - since) * 0.9;
    if (now - this.lastAdmissionAnswerAt < quiet) return this.options.queueTimeoutMs;
    for (const sent of this.admissionsSentAt) if (now - sent.at >= quiet) return undefined;
    return this.options.queueTimeoutMs;
  }

  /** A promise for the check phase (`setImmediate`) of this turn of the event loop, one per turn. */
  private endOfTurn(): Promise<void> {
    return (this.turnEnd ??= new Promise<void>((resolve) =>
      setImmediate(() => {
        this.turnEnd = undefined;
        resolve();
      }),
    ));
  }

  /** Runs an admission statement, known to `waitTimeoutMs` while it is in flight. */
  private async admitting<T>(statement: () => Promise<T>): Promise<T> {
    const sent = { at: Date.now() };
    this.admissionsSentAt.add(sent);
    try {
      const answer = await statement();
      this.lastAdmissionAnswerAt = Date.now();
      return answer;
    } finally {
      this.admissionsSentAt.delete(sent);
    }
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    const { charges } = req;
    if (this.leases && charges.length > 0) {
      const u = sharedUserId(req.userId);
      if (this.leases.admit(u, req.requestId, charges, req.now)) {
        // Admitted in memory: its handler runs with the others admitted in this turn, in its check phase,
        // as durable intent's requests do on the per-user store (the host's work on a batch of requests
        // costs less per request than on each one as it arrives: docs/performance.md, "Lease admissions
        // handed back once per turn").
        await this.endOfTurn();
        return admittedAs(req);
      }
      // Requests that find a lease spent wait for the next one; a few rounds at most, then the database.
      // (They go on when the take answers, with the others that waited for it.)
      for (let round = 0; round < 3; round++) {
        if (!(await this.leases.take(u, charges, req.now))) break;
        if (this.leases.admit(u, req.requestId, charges, req.now)) return admittedAs(req);
      }
    }
    const intent =
      this.options.durableIntent && req.interrupted
        ? intentItem(req.userId, req.interrupted, charges)
        : undefined;
    const row = await this.reserveBatcher.submit({
      id: req.requestId,
      u: sharedUserId(req.userId),
      provider: req.provider,
      pk: charges[0]?.periodKey ?? '',
      expires: req.now + this.options.reservationTtlMs,
      now: req.now,
      charges: charges.map((c) => ({
        p: c.periodKey,
        sc: c.scope,
        m: c.metric,
        a: c.amount,
        x: c.max,
        e: c.periodEnd,
        sx: c.shadowMax, // absent from the JSON when undefined
      })),
      intent,
    });
    if (!row.o_pass) return { admitted: false, exceeded: firstExceeded(charges, row.o_state ?? []) };
    const admitted = admittedAs(req);
    // Its reservation row, committed by that statement, carries its intent (a lease's admission has none).
    admitted.reservation.intent = intent !== undefined;
    // An admitted request's state is the shadow limit that would have refused it, if any.
    if (row.o_state?.length) admitted.shadow = shadowExceeded(charges, row.o_state[0]);
    return admitted;
  }

  /** One statement admits every queued request, in order (see `usage_reserve_batch`). */
  private async reserveBatch(items: ReserveItem[]): Promise<ReserveRow[]> {
    try {
      const now = Math.max(...items.map((i) => i.now));
      const { rows } = await this.admitting(() =>
        this.pool.query<ReserveRow>({ name: 'usage_reserve_batch', text: SQL.RESERVE_BATCH }, [
          now,
          JSON.stringify(items),
        ]),
      );
      const byId = new Map(rows.map((r) => [r.o_id, r]));
      return items.map((i) => byId.get(i.id) ?? { o_id: i.id, o_pass: false, o_state: null });
    } catch (e) {
      throw toStoreError(e);
    }
  }

  async release(reservation: Reservation): Promise<void> {
    const { charges } = reservation;
    if (this.leases?.done(reservation.requestId, charges)) return; // given back to its lease, in memory
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
    const item = settleItemOf(reservation.userId, s.event, reservation.charges, s.actual);
    const committed = await this.settleBatcher.submit(item);
    if (!committed) return { alerts: [] };
    // With webhooks, the batch's transaction stored the alerts (and their outbox rows) already.
    if (this.webhookUrls.length)
      return { alerts: item.alerts.filter((a) => a.stored).map((a) => alertOf(reservation.userId, item, a)) };
    return { alerts: await this.storeAlerts(reservation.userId, item) };
  }

  /**
   * One statement settles every queued request. Resolves per item with whether it was committed now;
   * a failed batch is kept for retry (the responses go out; the usage follows when the database is back).
   */
  private async settleBatch(items: SettleItem[]): Promise<boolean[]> {
    try {
      await this.runSettle(items);
      this.settled(items);
      return items.map(() => true);
    } catch (e) {
      this.log.error('settle', `usage settlement failed, queued for retry: ${(e as Error).message}`);
      this.retryQueue.push(...items);
      this.scheduleRetry();
      return items.map(() => false);
    }
  }

  private async runSettle(items: SettleItem[]): Promise<void> {
    const started = performance.now();
    for (const item of items) item.alerts = [];
    if (this.webhookUrls.length) await this.settleWithOutbox(items);
    else await this.settleOn(this.pool, items);
    this.onCommit?.(items.length, (performance.now() - started) / 1000);
  }

  /** The batch statement on `db`; then the thresholds each settlement crossed are marked on it. */
  private async settleOn(db: PgQueryable, items: SettleItem[]): Promise<void> {
    const { rows } = await db.query<{ inserted: string[]; counters: SettledCounter[] }>(
      { name: 'usage_settle_batch', text: SQL.SETTLE_BATCH },
      [settlePayload(items), Math.max(...items.map((i) => i.at))],
    );
    markAlerts(items, new Set(rows[0].inserted), rows[0].counters);
  }

  /**
   * Alert webhooks: the batch, the alerts it crossed and their outbox rows in one transaction, so that an
   * alert is in the outbox exactly when the usage that crossed it is committed.
   */
  private async settleWithOutbox(items: SettleItem[]): Promise<void> {
    const client = await this.pool.connect();
    let broken = false;
    try {
      await client.query('BEGIN');
      await this.settleOn(client, items);
      const crossed = items.flatMap((item) => item.alerts.map((a) => ({ item, a })));
      if (crossed.length) {
        const { rows } = await client.query<{ i: number }>(
          { name: 'usage_insert_alerts_outbox', text: SQL.INSERT_ALERTS_OUTBOX },
          [
            JSON.stringify(
              crossed.map(({ item, a }, i) => {
                const c = item.limits[a.index];
                return {
                  i,
                  u: item.u,
                  p: c.periodKey,
                  lid: a.shadow ? c.shadowLimitId : c.limitId,
                  t: a.threshold,
                  used: a.used,
                  mx: a.max,
                  at: item.at,
                  alert: alertOf(item.userId, item, a),
                };
              }),
            ),
            this.webhookUrls,
          ],
        );
        for (const { i } of rows) crossed[i].a.stored = true;
      }
      await client.query('COMMIT');
    } catch (e) {
      broken = true;
      await client.query('ROLLBACK').catch(() => undefined);
      for (const item of items) item.alerts = [];
      throw e;
    } finally {
      client.release(broken);
    }
  }

  /** The alert outbox (alert webhooks): claimed, delivered and retried through these. */
  alertOutbox(claimMs: number): AlertOutbox {
    return {
      outboxDue: async (now, limit) =>
        (
          await this.pool.query<OutboxRow>({ name: 'usage_claim_outbox', text: SQL.CLAIM_OUTBOX }, [
            now,
            limit,
            claimMs,
            this.webhookUrls,
          ])
        ).rows.map((r) => ({ ...r, id: Number(r.id), attempts: Number(r.attempts) })),
      outboxDelivered: async (id) => {
        await this.pool.query('DELETE FROM usage_alert_outbox WHERE id = $1', [id]);
      },
      outboxResend: async (userId) => {
        const { rows } = await this.pool.query(
          `UPDATE usage_alert_outbox SET parked = false, attempts = 0, next_at = 0, claimed_until = 0
           WHERE parked${userId === undefined ? '' : ' AND user_id = $1'} RETURNING id`,
          userId === undefined ? [] : [sharedUserId(userId)],
        );
        return rows.length;
      },
      outboxFailed: async (id, attempts, nextAt, parked, error) => {
        await this.pool.query(
          'UPDATE usage_alert_outbox SET attempts = $2, next_at = $3, parked = $4, last_error = $5, claimed_until = 0 WHERE id = $1',
          [id, attempts, Math.round(nextAt), parked, error.slice(0, 200)],
        );
      },
    };
  }

  /** Settlements committed: the leases they were admitted from may go back once all of theirs have. */
  private settled(items: SettleItem[]): void {
    if (this.leases) for (const item of items) this.leases.done(item.id);
  }

  /** Takes a batch of leases in one statement: the amount granted per asked lease id (0: refused). */
  private async takeLeases(
    items: { id: string }[],
    now: number,
    headroom: number,
  ): Promise<Map<string, number>> {
    try {
      const { rows } = await this.admitting(() =>
        this.pool.query<{ o_id: string; o_amount: string | number }>(
          { name: 'usage_take_leases', text: SQL.TAKE_LEASES },
          [now, headroom, JSON.stringify(items, (k, v: unknown) => (k === 'at' ? undefined : v))],
        ),
      );
      return new Map(rows.map((r) => [r.o_id, Number(r.o_amount)]));
    } catch (e) {
      throw toStoreError(e);
    }
  }

  /** Gives leases back (their amounts out of `reserved`), once each. */
  private async returnLeases(ids: string[]): Promise<void> {
    await this.pool.query({ name: 'usage_return_leases', text: SQL.RETURN_LEASES }, [ids, 0]);
  }

  private scheduleRetry(): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      const batch = this.retryQueue.splice(0, 256);
      void this.runSettle(batch).then(
        () => {
          this.settled(batch);
          this.retryDelay = RETRY_MIN_MS;
          if (this.retryQueue.length) this.scheduleRetry();
        },
        () => {
          this.retryQueue.unshift(...batch);
          this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
          this.scheduleRetry();
        },
      );
    }, this.retryDelay);
    this.retryTimer.unref();
  }

  /** Settlements not yet committed (their batch failed and awaits retry). */
  pendingWrites(): number {
    return this.retryQueue.length;
  }

  /** Stores the alert rows this settlement crossed; only rows actually inserted are published (once). */
  private async storeAlerts(userId: string, item: SettleItem): Promise<UsageAlert[]> {
    const out: UsageAlert[] = [];
    for (const a of item.alerts) {
      const c = item.limits[a.index];
      const { rows } = await this.pool.query({ name: 'usage_insert_alert', text: SQL.INSERT_ALERT }, [
        item.u,
        c.periodKey,
        a.shadow ? c.shadowLimitId : c.limitId,
        a.threshold,
        a.used,
        a.max,
        item.at,
      ]);
      if (rows.length) out.push(alertOf(userId, item, a));
    }
    return out;
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
    const { rows } = await this.pool.query<{
      used: string | number;
      reserved: string | number;
      granted: string | number;
      forgiven: string | number;
    }>({ name: 'usage_read_counters', text: SQL.READ_COUNTERS }, [
      sharedUserId(userId),
      keys.map((k) => k.periodKey),
      keys.map((k) => k.scope),
      keys.map((k) => k.metric),
    ]);
    // This instance's leased quota not handed to any request is room, not a request in flight. (Another
    // instance's unused leases still show as reserved: at most one block per instance, for `holdMs`.)
    return keys.map((k, i) => {
      const held = this.leases?.unused(userId, k.periodKey, k.scope, k.metric) ?? 0;
      const r = rows[i];
      return {
        ...k,
        used: Number(r.used) - Number(r.forgiven),
        reserved: Math.max(0, Number(r.reserved) - held),
        granted: Number(r.granted),
      };
    });
  }

  /** A grant or reset, under the counter row's lock (as admissions take it), with its audit row: one transaction. */
  adjustCounter(change: CounterAdjustment): Promise<StoredAdjustment> {
    const u = sharedUserId(change.userId);
    const key = [u, change.periodKey, change.scope, change.metric];
    return this.transaction(async (client) => {
      await client.query(SQL.ENSURE_COUNTER, [...key, change.periodEnd, change.now]);
      const { rows } = await client.query<{ used: string; forgiven: string }>(SQL.LOCK_COUNTER, key);
      // A reset forgives the settled usage at this moment; requests in flight count after it.
      const amount =
        change.kind === 'reset' ? Number(rows[0].used) - Number(rows[0].forgiven) : change.amount;
      await client.query(SQL.ADJUST_COUNTER, [
        ...key,
        change.kind === 'grant' ? amount : 0,
        change.kind === 'reset' ? amount : 0,
        change.now,
      ]);
      return this.audit(client, change, { periodKey: change.periodKey, amount, max: null, until: null });
    });
  }

  /** Stores or clears an override with its audit row, and tells the other instances (NOTIFY, on commit). */
  overrideLimit(change: LimitOverrideChange): Promise<StoredAdjustment> {
    const u = sharedUserId(change.userId);
    return this.transaction(async (client) => {
      const key = [u, change.scope, change.metric, change.period];
      if (change.kind === 'override')
        await client.query(SQL.UPSERT_OVERRIDE, [...key, change.max, change.until]);
      else await client.query(SQL.DELETE_OVERRIDE, key);
      const stored = await this.audit(client, change, {
        periodKey: null,
        amount: null,
        max: change.max,
        until: change.until,
      });
      await client.query('SELECT pg_notify($1, $2)', [SQL.OVERRIDES_CHANNEL, u]);
      return stored;
    });
  }

  async overrides(now: number, userId?: string): Promise<StoredOverride[]> {
    const { rows } = await this.pool.query<OverrideRow>(
      `SELECT user_id, scope, metric, period, max_value, until FROM usage_limit_overrides
       WHERE (until IS NULL OR until > $1) ${userId === undefined ? '' : 'AND user_id = $2'}`,
      userId === undefined ? [now] : [now, sharedUserId(userId)],
    );
    return rows.map((r) => overrideOf(r, appUserId(r.user_id)));
  }

  async adjustments(userId: string, limit: number): Promise<StoredAdjustment[]> {
    const { rows } = await this.pool.query<AdjustmentRow>(
      `SELECT ${ADJUSTMENT_COLUMNS} FROM usage_adjustments WHERE user_id = $1 ORDER BY seq DESC LIMIT $2`,
      [sharedUserId(userId), limit],
    );
    return rows.map((r) => ({ ...adjustmentOf(r), userId }));
  }

  /** From the counter table every instance decides against (periods not ended, with grants and resets). */
  async currentCounters(now: number): Promise<SpendingCounter[]> {
    const { rows } = await this.pool.query<{
      user_id: string;
      scope: string;
      metric: LimitMetric;
      period_key: string;
      period_end: string;
      used: string;
      granted: string;
    }>(
      `SELECT user_id, scope, metric, period_key, period_end, used - forgiven AS used, granted
       FROM usage_counters WHERE period_end > $1 AND (used <> 0 OR granted <> 0)`,
      [now],
    );
    return rows.map((r) => ({
      userId: appUserId(r.user_id),
      scope: r.scope,
      metric: r.metric,
      periodKey: r.period_key,
      periodEnd: Number(r.period_end),
      used: Number(r.used),
      granted: Number(r.granted),
    }));
  }

  async userActivity(userId: string, query: { periodKey: string; recent: number }): Promise<UserActivity> {
    const u = sharedUserId(userId);
    const [days, recent, alerts] = await Promise.all([
      this.pool.query(pgText(ACTIVITY_DAYS_SQL), [u, query.periodKey]),
      this.pool.query(pgText(ACTIVITY_RECENT_SQL), [u, query.recent]),
      this.pool.query(pgText(ACTIVITY_ALERTS_SQL), [u, query.recent]),
    ]);
    return activityOf(days.rows as never, recent.rows as never, alerts.rows as never);
  }

  /** One aggregate over the ledger rows of the given billing months. */
  async topSpenders(query: {
    by: 'calls' | 'tokens' | 'cost';
    periodKeys: readonly string[];
    limit: number;
  }): Promise<SpendingTotal[]> {
    const order = { calls: 'calls', tokens: 'tokens', cost: 'cost_micros' }[query.by];
    const { rows } = await this.pool.query<{
      user_id: string;
      calls: string;
      tokens: string;
      cost_micros: string;
      period_key: string;
    }>(
      `SELECT user_id, count(*) AS calls, sum(input_tokens + output_tokens) AS tokens,
         sum(cost_micros) AS cost_micros, max(period_key) AS period_key
       FROM usage_events WHERE period_key = ANY($1)
       GROUP BY user_id ORDER BY ${order} DESC, user_id COLLATE "C" LIMIT $2`,
      [query.periodKeys, query.limit],
    );
    return rows.map((r) => ({
      userId: appUserId(r.user_id),
      calls: Number(r.calls),
      tokens: Number(r.tokens),
      costMicros: Number(r.cost_micros),
      periodKey: r.period_key,
    }));
  }

  /**
   * Listens for override changes of other instances (one pool connection, LISTEN). When the connection
   * drops it is opened again after a second and `onChange` is told `undefined`: reload every override.
   */
  watchOverrides(onChange: (userId: string | undefined) => void): void {
    const listen = async () => {
      if (this.closing) return;
      let client: ListeningClient | undefined;
      try {
        client = (await this.pool.connect()) as ListeningClient;
        if (this.closing) return client.release(true);
        const c = client;
        c.on('notification', (n) => {
          if (n.channel === SQL.OVERRIDES_CHANNEL && n.payload !== undefined) onChange(appUserId(n.payload));
        });
        c.on('error', () => {
          if (this.listener !== c) return;
          this.listener = undefined;
          c.release(true);
          this.relisten = setTimeout(() => void listen(), 1_000);
          this.relisten.unref();
        });
        await c.query(`LISTEN ${SQL.OVERRIDES_CHANNEL}`);
        this.listener = c;
        if (this.closing) return this.stopListening();
        onChange(undefined); // what changed while nobody listened
      } catch {
        client?.release(true);
        this.relisten = setTimeout(() => void listen(), 1_000);
        this.relisten.unref();
      }
    };
    void listen();
  }

  private stopListening(): void {
    clearTimeout(this.relisten);
    const c = this.listener;
    this.listener = undefined;
    c?.release(true);
  }

  private async audit(
    client: PgQueryable,
    change: CounterAdjustment | LimitOverrideChange,
    what: { periodKey: string | null; amount: number | null; max: number | null; until: number | null },
  ): Promise<StoredAdjustment> {
    const row: AdjustmentRow = {
      id: newRequestId(),
      user_id: sharedUserId(change.userId),
      kind: change.kind,
      scope: change.scope,
      metric: change.metric,
      period: change.period,
      period_key: what.periodKey,
      amount: what.amount,
      max_value: what.max,
      until: what.until,
      actor: change.actor,
      reason: change.reason,
      created_at: change.now,
    };
    await client.query(SQL.INSERT_ADJUSTMENT, [
      row.id,
      row.user_id,
      row.kind,
      row.scope,
      row.metric,
      row.period,
      row.period_key,
      row.amount,
      row.max_value,
      row.until,
      row.actor,
      row.reason,
      row.created_at,
    ]);
    return { ...adjustmentOf(row), userId: change.userId };
  }

  private async transaction<T>(fn: (client: PgQueryable) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken = false;
    try {
      await client.query('BEGIN');
      const out = await fn(client);
      await client.query('COMMIT');
      return out;
    } catch (e) {
      broken = true;
      await client.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      client.release(broken);
    }
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
    this.closing = true;
    this.stopListening();
    for (const t of this.timers) clearInterval(t);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.retryQueue.length) {
      const batch = this.retryQueue.splice(0);
      await this.runSettle(batch).then(
        () => this.settled(batch),
        (e: Error) =>
          this.logger.error(`closing with usage settlements that could not be committed: ${e.message}`),
      );
    }
    await this.leases?.close();
    if (this.owned && this.dataSource?.isInitialized) await this.dataSource.destroy();
  }

  /**
   * Expired reservations (their instance died mid-request, or their handler outlived `reservationTtlMs`):
   * those with an intent are charged at their estimate (outcome `interrupted`), the others released.
   * Returns how many.
   */
  async sweep(now = this.clock()): Promise<number> {
    try {
      const charged = this.intentColumn ? await this.chargeInterrupted(now) : 0;
      const { rows } = await this.pool.query<{ released: string }>(
        this.intentColumn
          ? { name: 'usage_sweep_without_intent', text: SQL.SWEEP_EXPIRED_WITHOUT_INTENT }
          : { name: 'usage_sweep', text: SQL.SWEEP_EXPIRED },
        [now],
      );
      const n = Number(rows[0]?.released ?? 0) + charged;
      if (n > 0) {
        this.onReservationsReleased?.(n);
        this.logger.warn(
          `released ${n} expired reservation(s) not settled within storage.reservationTtlMs (${this.options.reservationTtlMs} ms)`,
        );
      }
      if (!this.leaseTable) return n;
      const { rows: leases } = await this.pool.query<{ released: string }>(
        { name: 'usage_return_leases', text: SQL.RETURN_LEASES },
        [[], now],
      );
      const l = Number(leases[0]?.released ?? 0);
      if (l > 0) this.logger.warn(`released ${l} expired lease(s) left by an instance that stopped`);
      return n + l;
    } catch (e) {
      this.log.warn('sweep', `reservation sweep failed: ${(e as Error).message}`);
      return 0;
    }
  }

  /** Settles expired reservations that carry intents, at their estimate; the settle statement makes it once. */
  private async chargeInterrupted(now: number): Promise<number> {
    let charged = 0;
    for (;;) {
      const { rows } = await this.pool.query<{ interrupted: string }>(
        { name: 'usage_expired_intents', text: SQL.EXPIRED_INTENTS },
        [now],
      );
      if (rows.length === 0) break;
      const items = rows.map((r) => JSON.parse(r.interrupted) as SettleItem);
      await this.pool.query({ name: 'usage_settle_batch', text: SQL.SETTLE_BATCH }, [
        settlePayload(items),
        Math.max(...items.map((i) => i.at)),
      ]);
      charged += items.length;
      if (rows.length < 500) break;
    }
    if (charged > 0)
      this.logger.warn(
        `charged ${charged} request(s) that never settled at their estimate (outcome interrupted)`,
      );
    return charged;
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
}

function col<K extends keyof LimitCharge>(charges: LimitCharge[], key: K): LimitCharge[K][] {
  return charges.map((c) => c[key]);
}

/** The shadow limit an admitted request would have exceeded, from the counter state the database reported. */
function shadowExceeded(charges: LimitCharge[], s: LockedCounter) {
  const c = charges.find(
    (x) => x.periodKey === s.p && x.scope === s.sc && x.metric === s.m && x.shadowMax !== undefined,
  );
  if (!c) return undefined;
  return {
    charge: { ...c, limitId: c.shadowLimitId!, max: c.shadowMax! + Number(s.granted ?? 0) },
    used: Number(s.used) - Number(s.forgiven ?? 0),
    reserved: Number(s.reserved),
  };
}

function firstExceeded(charges: LimitCharge[], state: LockedCounter[]) {
  for (const c of charges) {
    const s = state.find((r) => r.p === c.periodKey && r.sc === c.scope && r.m === c.metric);
    const used = Number(s?.used ?? 0);
    const reserved = Number(s?.reserved ?? 0);
    const granted = Number(s?.granted ?? 0);
    const forgiven = Number(s?.forgiven ?? 0);
    // As the user sees it: the limit with what was granted, the usage without what a reset forgave.
    if (used + reserved + Math.max(c.amount, 1) > c.max + granted + forgiven)
      return { charge: { ...c, max: c.max + granted }, used: used - forgiven, reserved };
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

/** What charging a request at its estimate consumes. */
function actualOfEvent(e: UsageEventRecord): ActualUsage {
  return { calls: 1, tokens: e.inputTokens + e.outputTokens, costMicros: e.costMicros };
}

/**
 * A request's intent (durable intent): its settlement at the estimate, kept in its reservation row as JSON
 * (no payload text: `settlePayload` makes it when the row is read back), without its limits, which only
 * threshold alerts read (`chargeInterrupted` raises none).
 */
function intentItem(userId: string, interrupted: UsageEventRecord, charges: LimitCharge[]): SettleItem {
  const item = settleItemOf(userId, interrupted, charges, actualOfEvent(interrupted), false);
  item.limits = [];
  return item;
}
