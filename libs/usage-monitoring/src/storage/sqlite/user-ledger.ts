import type { DataSource } from 'typeorm';
import type { UsageAlert } from '../../alerts/usage-alert.interface';
import { UsageStoreError } from '../usage-store.error';
import type {
  ApiRequestRecord,
  CounterKey,
  CounterSnapshot,
  ExceededLimit,
  LimitCharge,
  ReserveRequest,
  ReserveResult,
  Reservation,
  Settlement,
  SettleResult,
} from '../usage-store.interface';
import { actualOf, admittedAs, crossedThresholds, thresholdAlert } from '../settlement';
import { type ApplyPacer, type CounterDelta, rowJson, SqliteBatchWriter } from './sqlite-batch-writer';
import { type Allowance, type AllowanceBook } from './admin-log';
import { counterKey } from '../counter-key';
import type { SqliteConnection } from './sqlite-connection';
import type { IntentLog } from './intent-log';
import {
  entryJson,
  type JournaledWrite,
  type JournalRow,
  journalRowOf,
  pendingOf,
  type UsageJournal,
} from './usage-journal';

/** Cross-user batching: the store's journal, and how long a user's journaled rows wait to be applied. */
export interface LedgerJournal {
  journal: UsageJournal;
  /** Without one (`applyDelayMs` 0), each commit starts in the next turn. */
  pacer: ApplyPacer | undefined;
}

interface Counter {
  used: number;
  reserved: number;
  periodEnd: number;
}

/**
 * The limit a request would exceed with `max` (an enforced or a shadow one), as the user sees it: the
 * limit with what was granted, the usage without what a reset forgave. Undefined while there is room.
 */
function exceeded(
  c: LimitCharge,
  max: number,
  limitId: string,
  ctr: Counter,
  a: Allowance | undefined,
): ExceededLimit | undefined {
  // `max(amount, 1)`: an exhausted limit refuses even a request estimated at zero.
  if (ctr.used + ctr.reserved + (c.amount > 0 ? c.amount : 1) <= (a ? max + a.granted + a.forgiven : max))
    return undefined;
  const charge =
    max === c.max && limitId === c.limitId && !a ? c : { ...c, limitId, max: max + (a?.granted ?? 0) };
  return { charge, used: ctr.used - (a?.forgiven ?? 0), reserved: ctr.reserved };
}

/**
 * One open user database. Its counters live here, in memory, as the single authority (one process owns
 * the dataDir), so a reservation is a synchronous check-and-add: atomic by construction, no database
 * round trip. Settlements are durable once the cross-user journal holds them; they reach this database
 * through its group-commit writer `applyDelayMs` later (longer while many users' rows wait: `ApplyPacer`).
 */
export class UserLedger {
  private readonly counters = new Map<string, Counter>();
  /** Reservations not yet settled or released, by request id (the TTL sweep releases old ones). */
  private readonly outstanding = new Map<string, Reservation>();
  private inFlight = 0;
  /** Writes handed to the journal and not yet in it (their response may be out after a failed commit). */
  private unjournaled = 0;
  /** Undefined once parked: the database is closed and journaled rows wait in `parkedQueue`. */
  private writer: SqliteBatchWriter | undefined;
  private parkedQueue: JournalRow[] = [];
  /** Rows the applier has taken (`takeParked`) and not yet handed back (`unpark`): not in the file yet. */
  private applyingRows = 0;
  private onParked: ((ledger: UserLedger) => void) | undefined;
  /** The last failure to apply this parked user's rows to its file (they are safe in the journal). */
  private applyFailure: Error | null = null;

  private constructor(
    readonly userId: string,
    private dataSource: DataSource | undefined,
    private readonly onIdle: (ledger: UserLedger) => void,
    private readonly stallMs: number,
    private readonly journal: UsageJournal,
    private readonly allowances: AllowanceBook,
  ) {}

  /**
   * Opens the ledger: applies rows the journal still holds for this user (a crash, or a close that could
   * not commit them), then reads the counters back.
   */
  static async open(
    userId: string,
    dataSource: DataSource,
    connection: SqliteConnection,
    now: number,
    onIdle: (ledger: UserLedger) => void,
    stallMs: number,
    { journal, pacer }: LedgerJournal,
    allowances: AllowanceBook,
    intents?: IntentLog,
  ): Promise<UserLedger> {
    const ledger = new UserLedger(userId, dataSource, onIdle, stallMs, journal, allowances);
    const writer = new SqliteBatchWriter(connection, userId, () => ledger.notifyIfIdle(), pacer);
    ledger.writer = writer;
    const left = journal.takeLeftovers(userId);
    // One statement per row, each with its own deltas: a row applied before the crash is skipped whole.
    for (const row of left) ledger.apply({ ...row, retried: true });
    if (left.length && !(await writer.drain())) {
      journal.putBack(userId, ledger.unapplied());
      throw new UsageStoreError('operational_error', 'cannot apply journaled usage to the user database', {
        cause: writer.failure,
      });
    }
    if (intents) {
      // Requests admitted before a crash that never settled: charged at their estimate, after the journal's
      // settlements (a request that did settle keeps its own row; the intent's is then skipped whole).
      const left = intents.takeLeftovers(userId);
      // Forgotten only once the spending summary has them too (below).
      for (const row of left)
        writer.enqueue({ ...pendingOf({ ...row, retried: true }, intents), committed: undefined });
      if (left.length && !(await writer.drain())) {
        intents.putBack(userId, left);
        writer.takeQueued();
        throw new UsageStoreError(
          'operational_error',
          'cannot charge interrupted requests to the user database',
          {
            cause: writer.failure,
          },
        );
      }
      if (left.length) {
        await summarizeCharged(userId, left, connection, journal).catch((e: unknown) => {
          intents.putBack(userId, left);
          throw new UsageStoreError('operational_error', 'cannot add interrupted requests to the summary', {
            cause: e,
          });
        });
        for (const row of left) intents.forget(row.seq);
      }
    }
    const rows: { period_key: string; scope: string; metric: string; used: number; period_end: number }[] =
      await dataSource.query(
        'SELECT period_key, scope, metric, used, period_end FROM usage_counters WHERE user_id = ? AND period_end > ?',
        [userId, now],
      );
    for (const r of rows) {
      ledger.counters.set(counterKey(r.period_key, r.scope, r.metric), {
        used: Number(r.used),
        reserved: 0,
        periodEnd: Number(r.period_end),
      });
    }
    return ledger;
  }

  /**
   * No request in flight and nothing waiting for the journal: safe to close. Rows waiting to be applied
   * here do not count (they are in the journal; closing applies them first).
   */
  isIdle(): boolean {
    return this.inFlight === 0 && this.unjournaled === 0;
  }

  /** The last commit failed and has not yet succeeded on retry. */
  get failing(): boolean {
    return (this.writer?.failure ?? this.applyFailure) !== null;
  }

  /** Writes not yet committed to this database (those not yet in the journal are the journal's `pending`). */
  get pendingWrites(): number {
    return this.writer?.pending ?? 0;
  }

  /** Parked, and its database closed (`park` has finished). */
  get parked(): boolean {
    return this.writer === undefined;
  }

  /** Journaled rows not yet in this parked user's file: waiting, or being applied. */
  get parkedRows(): number {
    return this.parkedQueue.length + this.applyingRows;
  }

  reserve(req: ReserveRequest): ReserveResult {
    const failure = this.writer?.failure ?? this.applyFailure ?? this.journal.failure;
    if (failure) {
      throw new UsageStoreError('operational_error', 'usage writes are failing; refusing new reservations', {
        cause: failure,
      });
    }
    const since = this.writer?.busySince || this.journal.busySince;
    if (since !== 0 && Date.now() - since > this.stallMs) {
      throw new UsageStoreError('operational_error', 'a usage commit is stalled; refusing new reservations');
    }
    const { charges } = req;
    // Grants and resets of this user (admin changes): most users have none.
    const adjusted = this.allowances.of(this.userId);
    // Each charge's counter and adjustment, looked up once (a key is a new string each time it is built).
    const counters: Counter[] = [];
    const adjustments: (Allowance | undefined)[] = [];
    for (const c of charges) {
      const key = counterKey(c.periodKey, c.scope, c.metric);
      const ctr = this.counterAt(key, c.periodEnd, req.now);
      const a = adjusted?.get(key);
      counters.push(ctr);
      adjustments.push(a);
      const over = exceeded(c, c.max, c.limitId, ctr, a);
      if (over) return { admitted: false, exceeded: over };
    }
    // Shadow limits never refuse: the first that would have is reported with the admission.
    let shadow: ExceededLimit | undefined;
    for (let i = 0; i < charges.length && !shadow; i++) {
      const c = charges[i];
      if (c.shadowMax !== undefined)
        shadow = exceeded(c, c.shadowMax, c.shadowLimitId!, counters[i], adjustments[i]);
    }
    for (let i = 0; i < charges.length; i++) counters[i].reserved += charges[i].amount;
    this.inFlight++;
    const admitted = admittedAs(req);
    this.outstanding.set(req.requestId, admitted.reservation);
    if (shadow) admitted.shadow = shadow;
    return admitted;
  }

  /** Gives a reservation back uncharged; nothing when it was settled or released already. */
  release(reservation: Reservation): void {
    if (!this.outstanding.delete(reservation.requestId)) return;
    for (const c of reservation.charges) this.counter(c, reservation.createdAt).reserved -= c.amount;
    this.inFlight--;
    this.notifyIfIdle();
  }

  /** Releases the reservations made before `before` (handlers that never completed); returns them. */
  expire(before: number): Reservation[] {
    const released: Reservation[] = [];
    for (const r of this.outstanding.values()) {
      if (r.createdAt >= before) continue;
      this.release(r);
      released.push(r);
    }
    return released;
  }

  /**
   * Charges a request. Its reservation is normally outstanding here; one the TTL sweep released (or that
   * was made before this ledger was reopened) holds nothing any more, and is recorded all the same.
   */
  settle(reservation: Reservation, s: Settlement): Promise<SettleResult> {
    const held = this.outstanding.delete(reservation.requestId);
    if (!held) this.inFlight++; // the write below ends it
    const deltas: CounterDelta[] = [];
    const alerts: UsageAlert[] = [];
    const adjusted = this.allowances.of(this.userId);
    for (const c of reservation.charges) {
      const key = counterKey(c.periodKey, c.scope, c.metric);
      const ctr = this.counterAt(key, c.periodEnd, reservation.createdAt);
      if (held) ctr.reserved -= c.amount;
      const actual = actualOf(s.actual, c.metric);
      if (actual <= 0) continue;
      const a = adjusted?.get(key);
      // Thresholds are of the limit as adjusted: granted quota added, forgiven usage left out.
      const forgiven = a?.forgiven ?? 0;
      const max = c.max + (a?.granted ?? 0);
      const before = ctr.used - forgiven;
      ctr.used += actual;
      deltas.push({
        periodKey: c.periodKey,
        scope: c.scope,
        metric: c.metric,
        periodEnd: c.periodEnd,
        amount: actual,
      });
      const after = ctr.used - forgiven;
      const at = s.event.occurredAt;
      for (const threshold of crossedThresholds(before, after, max))
        alerts.push(thresholdAlert(this.userId, c, threshold, after, max, at, false));
      if (c.shadowMax !== undefined) {
        const shadowMax = c.shadowMax + (a?.granted ?? 0);
        for (const threshold of crossedThresholds(before, after, shadowMax))
          alerts.push(thresholdAlert(this.userId, c, threshold, after, shadowMax, at, true));
      }
    }
    return new Promise((resolve) =>
      this.write({ event: s.event, deltas, alerts: alerts.length ? alerts : undefined }, () =>
        resolve({ alerts }),
      ),
    );
  }

  recordRequest(row: ApiRequestRecord): Promise<void> {
    this.inFlight++;
    return new Promise((resolve) => this.write({ request: row }, resolve));
  }

  /**
   * Queues a write and calls `released` once the journal holds it (or its first commit failed: it stays
   * queued and is retried).
   */
  private write(write: JournaledWrite, released: () => void): void {
    const done = () => {
      this.inFlight--;
      released();
      this.notifyIfIdle();
    };
    this.unjournaled++;
    this.journal.append(this.userId, write, done, (seq) => {
      this.unjournaled--;
      this.apply({ seq, write });
      this.notifyIfIdle();
    });
  }

  /** Queues a journaled write for this database; the journal forgets it once this database has it. */
  private apply(row: JournalRow): void {
    if (!this.writer) {
      this.parkedQueue.push(row);
      this.onParked!(this);
      return;
    }
    this.writer.enqueue(pendingOf(row, this.journal));
  }

  /** Journaled writes this database has not committed. */
  private unapplied(): JournalRow[] {
    return this.writer!.takeQueued().map(journalRowOf);
  }

  /**
   * Closes the database but keeps the ledger, counters and all: later journaled rows wait
   * in `parkedQueue` and `onParked` is told, so that they reach the file in the background (`ParkedLedgers`).
   * Rows the database could not commit before closing are parked too.
   */
  async park(onParked: (ledger: UserLedger) => void): Promise<void> {
    const writer = this.writer!;
    await writer.drain();
    this.onParked = onParked;
    this.writer = undefined;
    const left = writer.takeQueued();
    await writer.finalize();
    await this.dataSource!.destroy().catch(() => undefined);
    this.dataSource = undefined;
    // The writer's leftovers are older than anything parked since the writer went: they go in front.
    if (left.length) {
      this.parkedQueue.unshift(...left.map(journalRowOf));
      this.applyFailure = writer.failure;
    }
    if (this.parkedQueue.length) onParked(this);
  }

  /** Commits the journaled rows waiting for this (open) database now; false when they could not be. */
  applyPending(): Promise<boolean> {
    return this.writer ? this.writer.drain() : Promise.resolve(this.parkedQueue.length === 0);
  }

  /** Hands the parked rows to the applier. */
  takeParked(): JournalRow[] {
    const rows = this.parkedQueue;
    this.parkedQueue = [];
    this.applyingRows = rows.length;
    return rows;
  }

  /** The applier is done: `left` (rows it could not commit) go back in front, with the failure. */
  unpark(left: JournalRow[], failure: Error | null): void {
    if (left.length) this.parkedQueue = left.concat(this.parkedQueue);
    this.applyingRows = 0;
    this.applyFailure = failure;
  }

  snapshot(keys: CounterKey[]): CounterSnapshot[] {
    const adjusted = this.allowances.of(this.userId);
    return keys.map((k) => {
      const key = counterKey(k.periodKey, k.scope, k.metric);
      const ctr = this.counters.get(key);
      const a = adjusted?.get(key);
      return {
        ...k,
        used: (ctr?.used ?? 0) - (a?.forgiven ?? 0),
        reserved: ctr?.reserved ?? 0,
        granted: a?.granted ?? 0,
      };
    });
  }

  /** Settled usage of a counter, before any reset (what a reset forgives). */
  settledUsage(periodKey: string, scope: string, metric: string): number {
    return this.counters.get(counterKey(periodKey, scope, metric))?.used ?? 0;
  }

  /** Commits what is queued, then closes the database. Returns false when writes were left uncommitted. */
  async close(): Promise<boolean> {
    // A parked ledger's rows are applied by `ParkedLedgers.flushAll`; what is left stays in the journal.
    if (!this.writer) return this.parkedQueue.length === 0;
    const drained = await this.writer.drain();
    // What could not be applied stays in the journal, and is applied before this user is opened again.
    if (!drained) this.journal.putBack(this.userId, this.unapplied());
    await this.writer.finalize();
    await this.dataSource!.destroy();
    return drained;
  }

  private counter(c: LimitCharge, now: number): Counter {
    return this.counterAt(counterKey(c.periodKey, c.scope, c.metric), c.periodEnd, now);
  }

  private counterAt(key: string, periodEnd: number, now: number): Counter {
    let ctr = this.counters.get(key);
    if (!ctr) {
      this.pruneEnded(now);
      ctr = { used: 0, reserved: 0, periodEnd };
      this.counters.set(key, ctr);
    }
    return ctr;
  }

  /** Drops counters of periods that have ended (runs only when a new counter appears). */
  private pruneEnded(now: number): void {
    for (const [key, ctr] of this.counters) {
      if (ctr.periodEnd <= now && ctr.reserved === 0) this.counters.delete(key);
    }
  }

  private notifyIfIdle(): void {
    if (this.isIdle()) this.onIdle(this);
  }
}

/**
 * Adds the intents this database charged (its rows flagged `interrupted` for their request ids; a request
 * that settled before the crash kept its own row, already summarised from the journal) to the spending
 * summary, once each. Run before the intents are forgotten: a crash in between repeats it harmlessly.
 */
async function summarizeCharged(
  userId: string,
  rows: JournalRow[],
  connection: SqliteConnection,
  journal: UsageJournal,
): Promise<void> {
  const byId = new Map<string, JournalRow>();
  for (const r of rows) byId.set((JSON.parse(rowJson(r.write)) as unknown[])[0] as string, r);
  const charged = await connection.all<{ request_id: string }>(
    `SELECT request_id FROM usage_events
     WHERE outcome = 'interrupted' AND request_id IN (SELECT value FROM json_each(?))`,
    [JSON.stringify([...byId.keys()])],
  );
  await journal.summarizeIntents(
    charged.map((c) => ({
      requestId: c.request_id,
      entry: entryJson(userId, byId.get(c.request_id)!.write),
    })),
  );
}
