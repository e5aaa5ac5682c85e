import { type ApplyPacer, RETRY_MAX_MS, SqliteBatchWriter } from './sqlite-batch-writer';
import type { SqliteConnection } from './sqlite-connection';
import { type JournalRow, journalRowOf, pendingOf, type UsageJournal } from './usage-journal';
import type { UserLedger } from './user-ledger';

/** Files the applier opens at once (each takes a slot of `maxOpenDataSources`). */
const APPLY_CONCURRENCY = 2;

export interface ParkedLedgersOptions {
  /** Ledgers kept at most (more only while their rows wait to be applied or requests are in flight). */
  max: number;
  /**
   * How long a parked user's rows wait, shared with the open users' commits: `applyDelayMs`, or 10 ms per
   * user whose rows are waiting (open or parked), at most 60 s. Without one (`applyDelayMs` 0), rows are
   * applied as soon as a slot is free.
   */
  pacer: ApplyPacer | undefined;
  journal: UsageJournal;
  /** Opens an existing user file for writing (never creates one). */
  openFile: (userId: string) => Promise<SqliteConnection>;
  /** Runs `fn` holding one of the cache's open-file slots. */
  withSlot: <T>(fn: () => Promise<T>) => Promise<T>;
}

/**
 * Users whose database the LRU closed, kept in memory with their counters (journal mode only). Their
 * requests are admitted against the in-memory counters and settle into the journal like anyone else's,
 * so a user coming back costs no database open on the request path. Their journaled rows reach their
 * files in the background, one open–commit–close per user once its first waiting row is as old as the
 * pacer's delay (`applyDelayMs`, or 10 ms per user waiting: 10,000 parked users with rows are applied
 * about every 60 s, about 170 opens a second, not one after another without a pause), within the same
 * open-file cap; rows not yet applied stay in the journal (applied at the next start after a crash).
 */
export class ParkedLedgers {
  /** Insertion order is recency: `get` moves a user to the end. */
  private readonly ledgers = new Map<string, UserLedger>();
  /**
   * Ledgers with rows to apply, with when their first waiting row was parked; insertion order is that
   * time's, so the first one is the next due (never dropped from memory while in here or in `applying`).
   */
  private readonly withRows = new Map<UserLedger, number>();
  /** Ledgers being applied, with the apply (settled once `applied` has run). */
  private readonly applying = new Map<UserLedger, Promise<void>>();
  private readonly failing = new Set<UserLedger>();
  private timer: NodeJS.Timeout | undefined;
  /** After a failed apply, no apply starts before this (`Date.now()`), unless forced. */
  private pausedUntil = 0;
  private retryDelay = 0;
  /** `applyPending` is running: every waiting row is applied now, whatever its age. */
  private forced = 0;
  private idleWaiters: (() => void)[] = [];
  private closed = false;

  constructor(private readonly options: ParkedLedgersOptions) {}

  get size(): number {
    return this.ledgers.size;
  }

  /** Journaled rows not yet in parked users' files (waiting, or being applied). */
  get pendingRows(): number {
    let n = 0;
    for (const ledger of this.withRows.keys()) n += ledger.parkedRows;
    for (const ledger of this.applying.keys()) n += ledger.parkedRows;
    return n;
  }

  /** Some parked user's rows could not be applied to its file (they are safe in the journal). */
  get anyFailing(): boolean {
    return this.failing.size > 0;
  }

  values(): IterableIterator<UserLedger> {
    return this.ledgers.values();
  }

  get(userId: string): UserLedger | undefined {
    const ledger = this.ledgers.get(userId);
    if (ledger) {
      this.ledgers.delete(userId);
      this.ledgers.set(userId, ledger);
    }
    return ledger;
  }

  /** Takes a ledger the LRU is closing; its later rows are parked on it (see `UserLedger.park`). */
  add(ledger: UserLedger): void {
    this.ledgers.set(ledger.userId, ledger);
    if (this.ledgers.size > this.options.max) this.trim();
  }

  /** A parked ledger has rows to apply. */
  rowsParked(ledger: UserLedger): void {
    // One being applied is put back in line when its apply ends, if rows came meanwhile.
    if (this.withRows.has(ledger) || this.applying.has(ledger)) return;
    this.withRows.set(ledger, Date.now());
    this.counted();
    if (!this.timer) this.pump();
  }

  /** Applies every parked row now (shutdown); resolves with the number of users left with rows. */
  flushAll(deadlineMs = 5_000): Promise<number> {
    this.closed = true;
    return this.applyPending(deadlineMs);
  }

  /** Applies every parked row now instead of after its delay; resolves with the number of users left with rows. */
  async applyPending(deadlineMs = 5_000): Promise<number> {
    this.forced++;
    try {
      this.pump();
      await new Promise<void>((resolve) => {
        const woken = () => {
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          this.idleWaiters = this.idleWaiters.filter((w) => w !== woken);
          resolve();
        }, deadlineMs);
        timer.unref();
        this.idleWaiters.push(woken);
        this.wakeIfIdle();
      });
    } finally {
      this.forced--;
    }
    // Past the deadline (a file that cannot be written): the applies running end before this returns (the
    // store may close the journal next); the rows left wait their turn again, with the backoff.
    await Promise.all(this.applying.values());
    this.pump();
    return this.withRows.size + this.applying.size;
  }

  private wakeIfIdle(): void {
    if (this.withRows.size > 0 || this.applying.size > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Tells the pacer how many parked users' rows are waiting. */
  private counted(): void {
    if (this.options.pacer) this.options.pacer.parkedWaiting = this.withRows.size + this.applying.size;
  }

  /** Starts the applies that are due, up to `APPLY_CONCURRENCY` at once; sets a timer for the next one. */
  private pump(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.closed && this.forced === 0) return;
    const now = Date.now();
    const delay = this.options.pacer?.delayMs() ?? 0;
    for (const [ledger, since] of this.withRows) {
      if (this.applying.size >= APPLY_CONCURRENCY) return;
      // Forced: every row now, failing files again at once (the caller's deadline bounds it).
      const due = this.forced > 0 ? now : Math.max(since + delay, this.pausedUntil);
      if (due > now) {
        this.timer = setTimeout(() => this.pump(), due - now);
        this.timer.unref();
        return;
      }
      this.withRows.delete(ledger);
      const apply = this.options
        .withSlot(() => this.applyTo(ledger))
        .then(
          (applied) => this.applied(ledger, applied),
          () => this.applied(ledger, false),
        );
      this.applying.set(ledger, apply);
    }
  }

  private applied(ledger: UserLedger, applied: boolean): void {
    this.applying.delete(ledger);
    this.retryDelay = applied ? 0 : Math.min(Math.max(this.retryDelay * 2, 50), RETRY_MAX_MS);
    if (!applied) this.pausedUntil = Date.now() + this.retryDelay;
    // Rows parked while the apply ran, or left by a failure: back in line, last.
    if (ledger.parkedRows > 0) this.withRows.set(ledger, Date.now());
    this.counted();
    if (this.ledgers.size > this.options.max) this.trim();
    this.wakeIfIdle();
    this.pump();
  }

  /** Drops the least recently used ledgers that hold nothing but counters, down to `max`. */
  private trim(): void {
    for (const [userId, ledger] of this.ledgers) {
      if (this.ledgers.size <= this.options.max) return;
      // Never one still closing its database (its last rows may yet come back to it) or with rows to apply.
      if (ledger.parked && ledger.isIdle() && !this.withRows.has(ledger) && !this.applying.has(ledger)) {
        this.ledgers.delete(userId);
        this.failing.delete(ledger);
      }
    }
  }

  /** One open–commit–close of the user's file with every row parked on it; false when they stay parked. */
  private async applyTo(ledger: UserLedger): Promise<boolean> {
    const rows = ledger.takeParked();
    if (rows.length === 0) return true;
    const { journal } = this.options;
    let db: SqliteConnection | undefined;
    let writer: SqliteBatchWriter | undefined;
    let left: JournalRow[] = rows;
    let failure: Error | null = null;
    try {
      db = await this.options.openFile(ledger.userId);
      writer = new SqliteBatchWriter(db, ledger.userId, () => undefined);
      for (const row of rows) writer.enqueue(pendingOf(row, journal));
      // One attempt: rows it cannot commit stay parked for the next turn (with backoff), freeing the slot.
      await writer.drain(0);
      left = writer.takeQueued().map(journalRowOf);
      failure = writer.failure;
    } catch (e) {
      failure = e as Error;
    } finally {
      await writer?.finalize();
      if (db) await db.close().catch(() => undefined);
    }
    if (left.length) {
      ledger.unpark(left, failure ?? new Error('usage rows could not be applied'));
      this.failing.add(ledger);
      return false;
    }
    ledger.unpark([], null);
    this.failing.delete(ledger);
    return true;
  }
}
