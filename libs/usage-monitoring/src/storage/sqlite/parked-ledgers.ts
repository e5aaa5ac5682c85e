import { RETRY_MAX_MS, SqliteBatchWriter } from './sqlite-batch-writer';
import type { SqliteConnection } from './sqlite-connection';
import { type JournalRow, journalRowOf, pendingOf, type UsageJournal } from './usage-journal';
import type { UserLedger } from './user-ledger';

/** Files the applier opens at once (each takes a slot of `maxOpenDataSources`). */
const APPLY_CONCURRENCY = 2;

export interface ParkedLedgersOptions {
  /** Ledgers kept at most (more only while their rows wait to be applied or requests are in flight). */
  max: number;
  /** How long a parked user's journaled rows wait before they are applied to its file. */
  applyDelayMs: number;
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
 * files in the background, in one open–commit–close per user every `applyDelayMs`, within the same
 * open-file cap; rows not yet applied stay in the journal (applied at the next start after a crash).
 */
export class ParkedLedgers {
  /** Insertion order is recency: `get` moves a user to the end. */
  private readonly ledgers = new Map<string, UserLedger>();
  /** Ledgers with rows to apply, or being applied (never dropped from memory while in here). */
  private readonly withRows = new Set<UserLedger>();
  private readonly failing = new Set<UserLedger>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private retryDelay = 0;
  private closed = false;

  constructor(private readonly options: ParkedLedgersOptions) {}

  get size(): number {
    return this.ledgers.size;
  }

  /** Journaled rows waiting for parked users' files. */
  get pendingRows(): number {
    let n = 0;
    for (const ledger of this.withRows) n += ledger.parkedRows;
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
    this.withRows.add(ledger);
    if (!this.timer && !this.running && !this.closed) this.schedule(this.options.applyDelayMs);
  }

  /** Applies every parked row now (shutdown); resolves with the number of users left with rows. */
  flushAll(deadlineMs = 5_000): Promise<number> {
    this.closed = true;
    return this.applyPending(deadlineMs);
  }

  /** Applies every parked row now instead of after its delay; resolves with the number of users left with rows. */
  async applyPending(deadlineMs = 5_000): Promise<number> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const until = Date.now() + deadlineMs;
    do {
      await this.running;
      if (this.withRows.size === 0) break;
      this.running = this.applyNow();
      await this.running;
    } while (this.withRows.size > 0 && Date.now() < until);
    this.running = undefined;
    if (this.withRows.size > 0 && !this.timer && !this.closed) this.schedule(this.options.applyDelayMs);
    return this.withRows.size;
  }

  /** Drops the least recently used ledgers that hold nothing but counters, down to `max`. */
  private trim(): void {
    for (const [userId, ledger] of this.ledgers) {
      if (this.ledgers.size <= this.options.max) return;
      // Never one still closing its database (its last rows may yet come back to it) or with rows to apply.
      if (ledger.parked && ledger.isIdle() && !this.withRows.has(ledger)) {
        this.ledgers.delete(userId);
        this.failing.delete(ledger);
      }
    }
  }

  private schedule(delayMs: number): void {
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running = this.applyNow().finally(() => {
        this.running = undefined;
        if (this.withRows.size > 0 && !this.timer && !this.closed) {
          // After a failure, back off; otherwise rows parked meanwhile wait their own delay.
          this.schedule(this.retryDelay || this.options.applyDelayMs);
        }
      });
    }, delayMs);
    this.timer.unref();
  }

  private async applyNow(): Promise<void> {
    const batch = [...this.withRows];
    let failed = false;
    let next = 0;
    const worker = async () => {
      while (next < batch.length) {
        const ledger = batch[next++];
        if (!(await this.options.withSlot(() => this.applyTo(ledger)))) failed = true;
      }
    };
    await Promise.all(Array.from({ length: Math.min(APPLY_CONCURRENCY, batch.length) }, worker));
    this.retryDelay = failed ? Math.min(Math.max(this.retryDelay * 2, 50), RETRY_MAX_MS) : 0;
    if (this.ledgers.size > this.options.max) this.trim();
  }

  /** One open–commit–close of the user's file with every row parked on it; false when they stay parked. */
  private async applyTo(ledger: UserLedger): Promise<boolean> {
    const rows = ledger.takeParked();
    if (rows.length === 0) {
      this.withRows.delete(ledger);
      return true;
    }
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
    // Rows parked while this apply ran keep the ledger in the set for the next turn.
    if (ledger.parkedRows === 0) this.withRows.delete(ledger);
    return true;
  }
}
