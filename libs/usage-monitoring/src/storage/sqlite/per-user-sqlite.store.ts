import { Logger } from '@nestjs/common';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { UsageStoreError } from '../usage-store.error';
import { ACTIVITY_ALERTS_SQL, ACTIVITY_DAYS_SQL, ACTIVITY_RECENT_SQL, activityOf } from '../activity-queries';
import type {
  ApiRequestRecord,
  CounterAdjustment,
  CounterKey,
  LimitCharge,
  LimitOverrideChange,
  CounterSnapshot,
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
  UsageStore,
} from '../usage-store.interface';
import type { LimitMetric } from '../../plans/plan.interface';
import { ThrottledLogger } from '../../enforcement/throttled-logger';
import { ADMIN_FILE, AdminLog, AllowanceBook } from './admin-log';
import { counterKey } from '../counter-key';
import { DataDirLock } from './data-dir-lock';
import type { SqliteDriver } from './sqlite-connection';
import { UserDataSourceFactory } from './user-data-source.factory';
import { JOURNAL_FILE, UsageJournal } from './usage-journal';
import { IntentLog } from './intent-log';
import { ApplyPacer, type CounterDelta } from './sqlite-batch-writer';
import { UserLedger } from './user-ledger';
import { UserLedgerCache } from './user-ledger.cache';
import { ParkedLedgers } from './parked-ledgers';

export interface PerUserSqliteStoreOptions {
  dataDir: string;
  maxOpenDataSources: number;
  busyTimeoutMs: number;
  synchronous: 'normal' | 'full';
  /** @default 'sqlite3' */
  driver?: SqliteDriver;
  clock: () => number;
  /** A reservation not settled by then (ms) is released by a sweep (see `sweep`). */
  reservationTtlMs: number;
  /** Told how many reservations each sweep released. */
  onReservationsReleased?: (count: number) => void;
  /** Told of each journal commit: how many writes it held and how long it took (s). */
  onCommit?: (writes: number, seconds: number) => void;
  /**
   * Durable intent: each admitted request's charge at its estimate (`ReserveRequest.interrupted`) is
   * committed to the intent log before the request is admitted, and forgotten once it settles or is
   * released; at start-up, intents a crash left are charged, once, flagged `interrupted`.
   */
  durableIntent?: boolean;
  /**
   * A user whose commit has been running longer than this (ms) is refused new reservations (503) until
   * it completes, instead of piling requests up behind a slow disk or a lock held elsewhere.
   * @default 250 (the enforcement timeout)
   */
  stallMs?: number;
  /**
   * How long a request may wait for its user's database to open (see `SqliteStorageOptions.openTimeoutMs`).
   * @default 5000
   */
  openTimeoutMs?: number;
  /** Cross-user group commit through the journal file (see `SqliteStorageOptions.journal`). */
  journal: { applyDelayMs: number; maxUsersInMemory: number };
  /** Alert webhook URLs: alerts go to the journal's outbox for each (`alerts.webhook`). */
  webhookUrls?: readonly string[];
  /**
   * How often (ms) the spending summary receives the journal's sums while entries arrive (tests).
   * @default SUMS_INTERVAL_MS
   */
  sumsIntervalMs?: number;
}

/**
 * The default store: one SQLite database per user under `dataDir`, opened on demand through an LRU of
 * DataSources. Open users' counters are held in memory as the single authority, so reservations cost
 * no I/O; every user's settlements of a turn are group-committed to the journal before their responses
 * are released, and reach each user's file in a later, larger commit.
 */
export class PerUserSqliteStore implements UsageStore {
  private readonly logger = new Logger('UsageMonitoring');
  private readonly log = new ThrottledLogger(this.logger);
  private sweeper: NodeJS.Timeout | undefined;
  private readonly dataDir: string;
  private readonly factory: UserDataSourceFactory;
  private readonly cache: UserLedgerCache;
  private readonly lock: DataDirLock;
  private openFailing = false;
  private journal!: UsageJournal;
  /** Users whose database the LRU closed, kept with their counters (unless `maxUsersInMemory` is 0). */
  private parked: ParkedLedgers | undefined;
  /** Durable intent: the log, and each admitted request's sequence number in it. */
  private intents: IntentLog | undefined;
  private readonly intentSeq = new Map<string, number>();
  /** Admin changes: their history and the overrides (a file), grants and resets (in memory too). */
  private admin!: AdminLog;
  private readonly allowances = new AllowanceBook();
  /** When the spending summary last dropped ended periods. */
  private prunedAt = 0;
  /** Spaces the open users' delayed commits (`applyDelayMs` 0: each commit in the next turn, unpaced). */
  private readonly pacer: ApplyPacer | undefined;

  constructor(private readonly options: PerUserSqliteStoreOptions) {
    this.dataDir = resolve(options.dataDir);
    this.factory = new UserDataSourceFactory({
      dataDir: this.dataDir,
      busyTimeoutMs: options.busyTimeoutMs,
      synchronous: options.synchronous,
      driver: options.driver,
    });
    this.cache = new UserLedgerCache(
      options.maxOpenDataSources,
      (userId) => this.openLedger(userId),
      (ledger) => this.retire(ledger),
    );
    this.lock = new DataDirLock(this.dataDir);
    const { applyDelayMs } = options.journal;
    this.pacer = applyDelayMs > 0 ? new ApplyPacer(applyDelayMs) : undefined;
  }

  /** The alert outbox (in the journal's database); after `init`. */
  alertOutbox(): UsageJournal {
    return this.journal;
  }

  /** Path of a user's database file (always directly inside `dataDir`). */
  filePath(userId: string): string {
    return this.factory.filePath(userId);
  }

  /** The SQLite driver the user files are opened with. */
  get driver(): SqliteDriver {
    return this.factory.driver;
  }

  /** How many user databases are open now. */
  get openDataSources(): number {
    return this.cache.openCount;
  }

  async init(): Promise<void> {
    try {
      mkdirSync(this.dataDir, { recursive: true });
      if (!statSync(this.dataDir).isDirectory()) throw new Error('not a directory');
    } catch (e) {
      throw new Error(`storage.dataDir "${this.options.dataDir}" cannot be used: ${(e as Error).message}`);
    }
    this.lock.acquire();
    await this.factory.prepareTemplate();
    try {
      this.admin = await AdminLog.open(this.dataDir, { ...this.options, driver: this.factory.driver });
      await this.admin.loadAllowances(this.allowances, this.options.clock());
    } catch (e) {
      this.lock.release();
      throw new Error(
        `storage.dataDir: cannot open ${ADMIN_FILE} in "${this.options.dataDir}": ${(e as Error).message}`,
      );
    }
    if (this.options.durableIntent) {
      try {
        this.intents = await IntentLog.open(this.dataDir, { ...this.options, driver: this.factory.driver });
      } catch (e) {
        await this.admin.close();
        this.lock.release();
        throw new Error(
          `storage.durableIntent: cannot open the intent log in "${this.options.dataDir}": ${(e as Error).message}`,
        );
      }
    }
    try {
      this.journal = await UsageJournal.open(this.dataDir, {
        ...this.options,
        driver: this.factory.driver,
        outboxTargets: this.options.webhookUrls ?? [],
        summary: true,
        sumsIntervalMs: this.options.sumsIntervalMs,
      });
      this.journal.onCommit = this.options.onCommit;
      if (this.options.journal.maxUsersInMemory > 0) {
        this.parked = new ParkedLedgers({
          max: this.options.journal.maxUsersInMemory,
          pacer: this.pacer,
          journal: this.journal,
          openFile: (userId) => this.factory.openFile(userId),
          withSlot: (fn) => this.cache.withSlot(fn),
        });
      }
    } catch (e) {
      await this.intents?.close();
      await this.admin.close();
      this.lock.release();
      throw new Error(
        `storage.dataDir: cannot open the journal ${JOURNAL_FILE} in "${this.options.dataDir}": ${(e as Error).message}`,
      );
    }
    // Rows a crash left in the journal reach their users' files before anything is served.
    const users = this.journal.leftoverUsers();
    if (users.length) {
      for (const userId of users) await this.cache.acquire(userId);
      await this.journal.drain();
      this.logger.log(`applied journaled usage of ${users.length} user(s) left by the previous run`);
    }
    // Requests a crash interrupted are charged at their estimate (opening a ledger applies its intents).
    const interrupted = this.intents?.leftoverUsers() ?? [];
    if (interrupted.length) {
      for (const userId of interrupted) await this.cache.acquire(userId);
      this.intents!.flush();
      this.logger.warn(
        `charged requests the previous run admitted and never settled, at their estimate (outcome interrupted), for ${interrupted.length} user(s)`,
      );
    }
    if (!this.journal.summaryBuilt) {
      // A data directory of an earlier version: its users' files are summarised once, with everything applied.
      await this.flush();
      const files = await this.journal.buildSummary(this.dataDir, {
        driver: this.factory.driver,
        busyTimeoutMs: this.options.busyTimeoutMs,
        now: this.options.clock(),
      });
      if (files > 0) this.logger.log(`summarised the usage of ${files} user file(s) for the admin API`);
    }
    const ttl = this.options.reservationTtlMs;
    this.sweeper = setInterval(() => this.sweep(), Math.min(60_000, Math.max(50, Math.floor(ttl / 4))));
    this.sweeper.unref();
  }

  /** `openTimeoutMs` while the user's database is opening: a first request waits for it, not for a commit. */
  waitTimeoutMs(userId: string): number | undefined {
    return this.cache.isOpening(userId) ? (this.options.openTimeoutMs ?? 5000) : undefined;
  }

  reserve(req: ReserveRequest): ReserveResult | Promise<ReserveResult> {
    const ledger = this.ledger(req.userId);
    if (!this.intents || !req.interrupted) {
      return ledger ? ledger.reserve(req) : this.cache.acquire(req.userId).then((l) => l.reserve(req));
    }
    if (!ledger) return this.cache.acquire(req.userId).then((l) => this.withIntent(req, l.reserve(req)));
    return this.withIntent(req, ledger.reserve(req));
  }

  /**
   * Admits `result` once its intent is written, with the other intents of this turn (with `synchronous:
   * 'full'`, once on disk); a failed write refuses it (503) and releases it.
   */
  private withIntent(req: ReserveRequest, result: ReserveResult): ReserveResult | Promise<ReserveResult> {
    if (!result.admitted) return result;
    const intents = this.intents!;
    const seq = intents.append(req.userId, { event: req.interrupted, deltas: req.charges.map(deltaOf) });
    return intents.turn.then(
      () => {
        this.intentSeq.set(req.requestId, seq);
        result.reservation.intent = true;
        return result;
      },
      (e: unknown) => {
        this.ledger(req.userId)?.release(result.reservation);
        throw new UsageStoreError('operational_error', 'the request intent could not be written', {
          cause: e,
        });
      },
    );
  }

  /** The request settled or was released: its intent has nothing left to charge. */
  private forgetIntent(requestId: string): void {
    const seq = this.intentSeq.get(requestId);
    if (seq === undefined) return;
    this.intentSeq.delete(requestId);
    this.intents!.forget(seq);
  }

  release(reservation: Reservation): void {
    this.ledger(reservation.userId)?.release(reservation);
    if (this.intents) {
      this.forgetIntent(reservation.requestId);
      // Its request has no row to skip the intent by: the forget is written now, not with the next intent.
      this.intents.flush();
    }
  }

  settle(reservation: Reservation, settlement: Settlement): Promise<SettleResult> {
    // A ledger with a reservation in flight is never evicted; one whose reservation the TTL sweep
    // released may have been, and is opened again to record the late settlement.
    const ledger = this.ledger(reservation.userId);
    const settled = ledger
      ? ledger.settle(reservation, settlement)
      : this.cache.acquire(reservation.userId).then((l) => l.settle(reservation, settlement));
    if (!this.intents) return settled;
    return settled.then((result) => {
      this.forgetIntent(reservation.requestId);
      return result;
    });
  }

  /**
   * Releases reservations older than `reservationTtlMs` (a handler that never completed, a stalled upstream
   * stream), so that they stop holding quota and their user's database slot. Returns how many.
   */
  sweep(now = this.options.clock()): number {
    if (now - this.prunedAt >= 60_000) {
      this.prunedAt = now;
      void this.journal.pruneSummary(now).catch(() => undefined);
    }
    const before = now - this.options.reservationTtlMs;
    let released = 0;
    const expire = (ledger: UserLedger) => {
      for (const r of ledger.expire(before)) {
        released++;
        if (this.intents) this.forgetIntent(r.requestId);
      }
    };
    for (const ledger of this.cache.values()) expire(ledger);
    if (this.parked) for (const ledger of this.parked.values()) expire(ledger);
    if (released > 0) {
      this.intents?.flush();
      this.options.onReservationsReleased?.(released);
      this.log.warn(
        'ttl',
        `released ${released} reservation(s) not settled within storage.reservationTtlMs (${this.options.reservationTtlMs} ms); a settlement arriving later is still recorded`,
      );
    }
    return released;
  }

  async recordRequest(row: ApiRequestRecord): Promise<void> {
    const ledger = this.ledger(row.userId) ?? (await this.cache.acquire(row.userId));
    await ledger.recordRequest(row);
  }

  async readCounters(userId: string, keys: CounterKey[]): Promise<CounterSnapshot[]> {
    const ledger = this.ledger(userId) ?? (await this.cache.acquire(userId));
    return ledger.snapshot(keys);
  }

  /**
   * A grant, or a reset forgiving the counter's settled usage at this moment (requests in flight count
   * after it), recorded in the admin file, then in force for the next admission.
   */
  adjustCounter(change: CounterAdjustment): Promise<StoredAdjustment> {
    const key = counterKey(change.periodKey, change.scope, change.metric);
    const { userId } = change;
    return this.admin.recordCounter(
      change,
      async () => {
        if (change.kind === 'grant') return change.amount;
        const ledger = this.ledger(userId) ?? (await this.cache.acquire(userId));
        const forgiven = this.allowances.of(userId)?.get(key)?.forgiven ?? 0;
        return ledger.settledUsage(change.periodKey, change.scope, change.metric) - forgiven;
      },
      (amount) =>
        change.kind === 'grant'
          ? this.allowances.add(userId, key, amount, 0)
          : this.allowances.add(userId, key, 0, amount),
    );
  }

  overrideLimit(change: LimitOverrideChange): Promise<StoredAdjustment> {
    return this.admin.recordOverride(change);
  }

  overrides(now: number, userId?: string): Promise<StoredOverride[]> {
    return this.admin.overrides(now, userId);
  }

  adjustments(userId: string, limit: number): Promise<StoredAdjustment[]> {
    return this.admin.adjustments(userId, limit);
  }

  /** From the spending summary in the journal's database (`spending-summary.ts`), with grants and resets. */
  async currentCounters(now: number): Promise<SpendingCounter[]> {
    // The summary receives the journal's sums about once a second: first those of what has committed.
    await this.journal.summarized();
    const rows = await this.journal.summaryCounters(now);
    return rows.map((r) => {
      const userId = JSON.parse(r.user_id) as string;
      const a = this.allowances.of(userId)?.get(counterKey(r.period_key, r.scope, r.metric));
      return {
        userId,
        scope: r.scope,
        metric: r.metric as LimitMetric,
        periodKey: r.period_key,
        periodEnd: Number(r.period_end),
        used: Number(r.used) - (a?.forgiven ?? 0),
        granted: a?.granted ?? 0,
      };
    });
  }

  async topSpenders(query: {
    by: 'calls' | 'tokens' | 'cost';
    periodKeys: readonly string[];
    limit: number;
  }): Promise<SpendingTotal[]> {
    await this.journal.summarized();
    return this.journal.summaryTop(query.by, query.periodKeys, query.limit);
  }

  /**
   * Read from the user's file once the rows journaled for them have reached it (the journal's commit of
   * what was queued at the call, then this user's rows applied); a user with no file has no activity.
   */
  async userActivity(userId: string, query: { periodKey: string; recent: number }): Promise<UserActivity> {
    await this.journal.caughtUp();
    const open = this.cache.get(userId);
    if (open) await open.applyPending();
    else if (this.parked?.get(userId)?.parkedRows) await this.parked.applyPending();
    if (!existsSync(this.factory.filePath(userId))) return { days: [], recent: [], alerts: [] };
    return this.cache.withSlot(async () => {
      const c = await this.factory.openFile(userId);
      try {
        const [days, recent, alerts] = [
          await c.all(ACTIVITY_DAYS_SQL, [userId, query.periodKey]),
          await c.all(ACTIVITY_RECENT_SQL, [userId, query.recent]),
          await c.all(ACTIVITY_ALERTS_SQL, [userId, query.recent]),
        ];
        return activityOf(days as never, recent as never, alerts as never);
      } finally {
        await c.close();
      }
    });
  }

  /**
   * Applies every journaled row to its user's file now, instead of `applyDelayMs` after it was journaled,
   * for reading the files right after a request. Resolves true once all of them committed.
   */
  async flush(): Promise<boolean> {
    if (!(await this.journal.drain())) return false;
    const applied = await Promise.all([...this.cache.values()].map((l) => l.applyPending()));
    const left = (await this.parked?.applyPending()) ?? 0;
    return left === 0 && applied.every(Boolean);
  }

  /** Users kept in memory while their database is closed. */
  get usersInMemory(): number {
    return this.parked?.size ?? 0;
  }

  /** The user's ledger if it is open or parked; never opens. */
  private ledger(userId: string): UserLedger | undefined {
    return this.cache.get(userId) ?? this.parked?.get(userId);
  }

  /** An idle ledger the LRU evicts: parked with its counters, or closed when none are kept in memory. */
  private retire(ledger: UserLedger): Promise<unknown> {
    const parked = this.parked;
    if (!parked) return ledger.close();
    parked.add(ledger);
    return ledger.park((l) => parked.rowsParked(l));
  }

  async health(): Promise<StoreHealth> {
    try {
      if (!(await stat(this.dataDir)).isDirectory())
        return { up: false, reason: 'data directory unavailable' };
    } catch {
      return { up: false, reason: 'data directory unavailable' };
    }
    if (this.openFailing) return { up: false, reason: 'cannot open user databases' };
    if (this.journal.failure || this.intents?.failure || this.parked?.anyFailing)
      return { up: false, reason: 'usage writes failing' };
    for (const l of this.cache.values()) if (l.failing) return { up: false, reason: 'usage writes failing' };
    return { up: true };
  }

  /**
   * Writes not yet in their user's file: queued for the journal, or journaled and waiting for the file of an
   * open user or of one kept in memory (parked).
   */
  pendingWrites(): number {
    let n = this.journal.pending + (this.parked?.pendingRows ?? 0);
    for (const l of this.cache.values()) n += l.pendingWrites;
    return n;
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    // The journal first (its commits hand rows to the ledgers), the ledgers (they apply them, and ask the
    // journal to forget them), then the journal's last deletions.
    const journaled = await this.journal.drain();
    await this.parked?.flushAll();
    let uncommitted = await this.cache.closeAll();
    // Rows parked while the open databases closed (requests that were still finishing).
    if (this.parked) uncommitted += await this.parked.flushAll();
    await this.journal.drain();
    await this.journal.close();
    await this.intents?.close();
    await this.admin.close();
    if (!journaled) this.logger.error('usage writes could not be committed to the journal before closing');
    if (uncommitted > 0) {
      this.logger.error(
        `${uncommitted} user database(s) closed with usage writes that could not be committed (they stay in the journal and are applied at the next start)`,
      );
    }
    this.lock.release();
  }

  private async openLedger(userId: string): Promise<UserLedger> {
    let dataSource;
    try {
      dataSource = await this.factory.create(userId);
    } catch (e) {
      this.openFailing = true;
      throw new UsageStoreError('database_init_failed', 'cannot open the user database', { cause: e });
    }
    try {
      const ledger = await UserLedger.open(
        userId,
        dataSource,
        this.factory.connectionOf(dataSource),
        this.options.clock(),
        () => this.cache.notifyIdle(),
        this.options.stallMs ?? 250,
        { journal: this.journal, pacer: this.pacer },
        this.allowances,
        this.intents,
      );
      this.openFailing = false;
      return ledger;
    } catch (e) {
      this.openFailing = true;
      await dataSource.destroy().catch(() => undefined);
      if (e instanceof UsageStoreError) throw e;
      throw new UsageStoreError('missing_usage_tables', 'cannot read the usage tables', { cause: e });
    }
  }
}

/** The counter increment of charging a limit its reserved amount. */
function deltaOf(c: LimitCharge): CounterDelta {
  return {
    periodKey: c.periodKey,
    scope: c.scope,
    metric: c.metric,
    periodEnd: c.periodEnd,
    amount: c.amount,
  };
}
