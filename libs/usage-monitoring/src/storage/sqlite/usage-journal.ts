import { join } from 'node:path';
import type { OutboxRow } from '../../alerts/alert-outbox';
import { openConnection, type SqliteConnection, type SqliteDriver } from './sqlite-connection';
import { synchronousPragma } from './user-data-source.factory';
import {
  buildSummary,
  prepareSummary,
  pruneSummary,
  summarizeIntents,
  summaryCounters,
  SummarySums,
  summaryTop,
  type SummaryCounterRow,
} from './spending-summary';
import type { SpendingTotal } from '../usage-store.interface';
import {
  deltasJson,
  deltasOf,
  jsonArray,
  kindOf,
  MAX_ROWS_PER_STATEMENT,
  RETRY_MAX_MS,
  RETRY_MIN_MS,
  rowJson,
  type CounterDelta,
  type PendingWrite,
} from './sqlite-batch-writer';

/** The journal's file, directly inside `dataDir` (a dot-name, which no user's file can have). */
export const JOURNAL_FILE = '.usage-journal.sqlite';

/** A write as the journal keeps it: what its user's database will receive, without the callbacks. */
export type JournaledWrite = Pick<PendingWrite, 'event' | 'deltas' | 'request' | 'alerts' | 'row' | 'kind'>;

/**
 * The journal's entry format: `[userId, 3, isEvent, row values, deltas | null, alerts | null]`, the deltas as
 * `deltasJson` writes them. Format 2 (until 2026-12-06) had the same fields with each delta an object; a crash
 * or an upgrade may leave entries of it, and of the object form before it, which are read as they were.
 */
const FORMAT = 3;

/** A write's journal entry (JSON text), the row values in the same text its user's database will insert. */
export function entryJson(userId: string, w: JournaledWrite): string {
  return `[${JSON.stringify(userId)},${FORMAT},${kindOf(w) === 'event'},${rowJson(w)},${
    w.deltas?.length ? deltasJson(w.deltas) : 'null'
  },${w.alerts?.length ? JSON.stringify(w.alerts) : 'null'}]`;
}

/**
 * A journal entry read back at start-up: this format, format 2, or the object form of earlier versions
 * (`[userId, { event, deltas, request, alerts }]`), which a crash may have left.
 */
export function parseEntry(text: string): [string, JournaledWrite] {
  const e = JSON.parse(text) as unknown[];
  if (e[1] !== FORMAT && e[1] !== 2) return e as [string, JournaledWrite];
  // Format 2's deltas are objects already.
  const raw = e[4] as unknown[] | null;
  const deltas = !raw ? undefined : e[1] === 2 ? (raw as CounterDelta[]) : deltasOf(raw as unknown[][]);
  return [
    e[0] as string,
    {
      kind: e[2] ? 'event' : 'request',
      row: JSON.stringify(e[3]),
      deltas,
      alerts: (e[5] as PendingWrite['alerts']) ?? undefined,
    },
  ];
}

/**
 * The alert outbox lives in the journal's database: a trigger on the journal's insert adds a row per alert
 * and webhook, in the statement (so the transaction) that makes the settlement durable. An alert is
 * unique per webhook, user, period, limit and threshold.
 */
const OUTBOX_SCHEMA = `
CREATE TABLE IF NOT EXISTS usage_alert_outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  target TEXT NOT NULL,
  user_id TEXT NOT NULL,
  period_key TEXT NOT NULL,
  limit_id TEXT NOT NULL,
  threshold INTEGER NOT NULL,
  alert TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_at INTEGER NOT NULL DEFAULT 0,
  parked INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  UNIQUE (target, user_id, period_key, limit_id, threshold)
);
CREATE INDEX IF NOT EXISTS usage_alert_outbox_head ON usage_alert_outbox (target, user_id, parked, id);
CREATE TABLE IF NOT EXISTS usage_webhook_targets (target TEXT PRIMARY KEY);`;

const OUTBOX_TRIGGER = `
CREATE TRIGGER IF NOT EXISTS usage_alert_outbox_fill AFTER INSERT ON usage_journal
WHEN json_type(NEW.entry, '$[5]') = 'array'
BEGIN
  INSERT OR IGNORE INTO usage_alert_outbox (target, user_id, period_key, limit_id, threshold, alert)
  SELECT t.target, json_extract(NEW.entry, '$[0]'), json_extract(a.value, '$.periodKey'),
    json_extract(a.value, '$.limitId'), json_extract(a.value, '$.threshold'), a.value
  FROM json_each(NEW.entry, '$[5]') AS a CROSS JOIN usage_webhook_targets AS t;
END;`;

const OUTBOX_DUE_SQL = `
SELECT o.id, o.target, o.user_id, o.alert, o.attempts FROM usage_alert_outbox o
WHERE o.parked = 0 AND o.next_at <= ?
  AND o.id = (SELECT min(p.id) FROM usage_alert_outbox p
              WHERE p.target = o.target AND p.user_id = o.user_id AND p.parked = 0)
ORDER BY o.id LIMIT ?`;

/** Creates the outbox and sets its webhooks; with none, alerts stop being added (rows left stay). */
async function prepareOutbox(c: SqliteConnection, targets: readonly string[]): Promise<void> {
  for (const stmt of OUTBOX_SCHEMA.split(';').filter((x) => x.trim())) await c.run(stmt, []);
  // Alerts for a webhook no longer configured are dropped with it.
  await c.run('DELETE FROM usage_alert_outbox WHERE target NOT IN (SELECT value FROM json_each(?))', [
    JSON.stringify(targets),
  ]);
  await c.run('DELETE FROM usage_webhook_targets', []);
  for (const t of targets) await c.run('INSERT INTO usage_webhook_targets (target) VALUES (?)', [t]);
  if (targets.length) await c.run(OUTBOX_TRIGGER, []);
  else await c.run('DROP TRIGGER IF EXISTS usage_alert_outbox_fill', []);
}

/** A journaled write on its way to its user's database, with its row number in the journal. */
export interface JournalRow {
  seq: number;
  write: JournaledWrite;
  /** A previous attempt failed: it is applied in a statement of its own (see `PendingWrite.retried`). */
  retried?: boolean;
}

/** The write a user's database commits for a journal row; once committed, the journal forgets the row. */
export function pendingOf(row: JournalRow, journal: { forget(seq: number): void }): PendingWrite {
  const { seq } = row;
  const pending = journaledFields(row.write);
  pending.retried = row.retried;
  pending.journalSeq = seq;
  pending.committed = () => journal.forget(seq);
  return pending;
}

/** A journaled write a user's database did not commit, back as its journal row. */
export function journalRowOf(w: PendingWrite): JournalRow {
  return { seq: w.journalSeq!, write: journaledFields(w), retried: w.retried };
}

/**
 * The fields of a write the journal keeps, written out: a literal that starts with a spread costs V8 a new
 * hidden class per call, and this runs once per request.
 */
function journaledFields(w: JournaledWrite): PendingWrite {
  return { event: w.event, deltas: w.deltas, request: w.request, alerts: w.alerts, row: w.row, kind: w.kind };
}

interface Entry {
  userId: string;
  write: JournaledWrite;
  /** The write's entry text (`entryJson`). */
  json: string;
  /** Called once: `true` when the journal holds the write, `false` when its first commit failed (it stays queued). */
  done: (committed: boolean) => void;
  /** Called when the journal holds the write (also after retries), with its sequence number. */
  journaled: (seq: number) => void;
  /** Set after the first failed attempt: `done` has been called and is not called again. */
  failed?: boolean;
}

/**
 * How often (ms) the journal's write-ahead log is checkpointed into its database, in the background, while
 * commits arrive. SQLite's automatic checkpoint (every 1,000 pages) ran inside the commit that crossed the
 * mark, with its two fsyncs, and every response waiting on that commit waited for them too.
 */
export const CHECKPOINT_INTERVAL_MS = 200;

/**
 * How often (ms) the spending summary receives the sums of the entries committed since its last ones (see
 * `spending-summary.ts`), while entries arrive; and at once when it is read (`summarized`) or drained.
 */
export const SUMS_INTERVAL_MS = 1_000;

const INSERT_SQL = 'INSERT INTO usage_journal (entry) SELECT value FROM json_each(?) WHERE true';
const DELETE_SQL = 'DELETE FROM usage_journal WHERE seq IN (SELECT value FROM json_each(?))';

/**
 * Rows a previous run left, per user, oldest first (the journal's, or the intent log's): each user's are
 * handed out once, to be applied before the user's counters are read, and handed back if they could not be.
 */
export class LeftoverRows {
  private readonly left = new Map<string, JournalRow[]>();

  /** Users with rows left that their database has not confirmed. */
  leftoverUsers(): string[] {
    return [...this.left.keys()];
  }

  /** Takes a user's leftover rows (oldest first); the caller applies them, then `forget`s their seqs. */
  takeLeftovers(userId: string): JournalRow[] {
    const list = this.left.get(userId) ?? [];
    this.left.delete(userId);
    return list;
  }

  /** Hands rows back that could not be applied (the user's database was closed before it committed them). */
  putBack(userId: string, rows: JournalRow[]): void {
    if (rows.length === 0) return;
    this.left.set(userId, [...rows, ...(this.left.get(userId) ?? [])]);
  }

  /** Whether any user's rows are left. */
  protected get anyLeft(): boolean {
    return this.left.size > 0;
  }

  /** Adds a row read back at start-up, after the user's earlier ones. */
  protected keep(userId: string, row: JournalRow): void {
    const list = this.left.get(userId);
    if (list) list.push(row);
    else this.left.set(userId, [row]);
  }
}

/**
 * Cross-user group commit. Every user's settlements of a turn go into one transaction on one journal
 * database, so that many users active at once cost one commit per turn instead of one per user; each
 * user's rows then move to the user's own database in larger, delayed batches (see `UserLedger`), and
 * leave the journal once that database has committed them (`forget`). Rows still here at start-up
 * (a crash between the two commits) are handed back by `leftovers` and applied before the user's
 * counters are read; applying twice is harmless (ledger rows are unique by request id).
 */
export class UsageJournal extends LeftoverRows {
  private queue: Entry[] = [];
  private forgotten: number[] = [];
  /** Forgotten entries above the summary's mark: deleted once a mark covers them (see `spending-summary.ts`). */
  private held: number[] = [];
  /**
   * The sums of committed entries the summary has not received yet (`SummarySums`: per user, not per entry),
   * and the mark (every entry up to it has).
   */
  private unsummed = new SummarySums();
  private mark = 0;
  private sumsAt = 0;
  private sumsIntervalMs = SUMS_INTERVAL_MS;
  /** Set by `summarized()` and `drain()`: the next commit carries the sums, due or not. */
  private sumsWanted = false;
  /** Entries whose sums the summary has received since the journal was opened (see `summarized`). */
  private summedCount = 0;
  private running = false;
  /** Writes in the commit now running. */
  private committing = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_MIN_MS;
  /** The last commit failure; cleared by the next successful commit. */
  failure: Error | null = null;
  /** Writes appended, and writes the journal holds, since it was opened (see `caughtUp`). */
  private appended = 0;
  private journaledCount = 0;
  /** When the commit now running started (`Date.now()`), 0 when none runs. */
  busySince = 0;
  /** Told of each commit that appended writes: how many, and how long it took (s). */
  onCommit: ((writes: number, seconds: number) => void) | undefined;
  /** Commits since the last checkpoint began, and the checkpoint running now. */
  private uncheckpointed = 0;
  private idleTicks = 0;
  private checkpointing: Promise<unknown> | undefined;
  private checkpointTimer: NodeJS.Timeout | undefined;

  /**
   * `statements` writes with SQLite's automatic checkpoint off; `checkpointer`, a second connection to the
   * same file, copies the log into the database every `CHECKPOINT_INTERVAL_MS` (a passive checkpoint, which
   * never blocks the writer), on a thread of its own with `sqlite3`. A crash loses nothing: the log is the
   * durable copy until then, and SQLite recovers it at the next open.
   */
  private constructor(
    private readonly statements: SqliteConnection,
    private readonly checkpointer: SqliteConnection,
  ) {
    super();
    this.checkpointTimer = setInterval(() => this.checkpoint(), CHECKPOINT_INTERVAL_MS);
    this.checkpointTimer.unref();
  }

  static async open(
    dataDir: string,
    options: {
      busyTimeoutMs: number;
      synchronous: 'normal' | 'full';
      driver: SqliteDriver;
      /** Alert webhook URLs: each alert a journaled settlement carries gets an outbox row per URL. */
      outboxTargets?: readonly string[];
      /** Keeps the spending summary (`spending-summary.ts`) of what the journal receives. */
      summary?: boolean;
      /** With `summary`: how often (ms) the sums go to it while entries arrive. @default SUMS_INTERVAL_MS */
      sumsIntervalMs?: number;
    },
    file = JOURNAL_FILE,
  ): Promise<UsageJournal> {
    const path = join(dataDir, file);
    const connection = await openConnection(options.driver, path, {
      mustExist: false,
      busyTimeoutMs: options.busyTimeoutMs,
      pragmas: `PRAGMA journal_mode = WAL;
        ${synchronousPragma(options.synchronous)};
        PRAGMA wal_autocheckpoint = 0;
        CREATE TABLE IF NOT EXISTS usage_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);`,
    });
    let checkpointer: SqliteConnection;
    try {
      checkpointer = await openConnection(options.driver, path, {
        mustExist: true,
        busyTimeoutMs: options.busyTimeoutMs,
        pragmas: synchronousPragma(options.synchronous),
      });
    } catch (e) {
      await connection.close().catch(() => undefined);
      throw e;
    }
    const journal = new UsageJournal(connection, checkpointer);
    try {
      if (options.outboxTargets) await prepareOutbox(connection, options.outboxTargets);
      if (options.summary) {
        const { built, mark } = await prepareSummary(connection);
        journal.summaryBuilt = built;
        journal.mark = mark;
        journal.summary = true;
        journal.sumsIntervalMs = options.sumsIntervalMs ?? SUMS_INTERVAL_MS;
        journal.sumsAt = Date.now();
      }
      const rows = await connection.all<{ seq: number; entry: string }>(
        'SELECT seq, entry FROM usage_journal ORDER BY seq',
      );
      for (const r of rows) {
        // A statement's sums (`SummarySums`): its trigger deletes them; skipped should one be left.
        if (r.entry.startsWith('{')) continue;
        const [userId, write] = parseEntry(r.entry);
        journal.keep(userId, { seq: r.seq, write });
      }
    } catch (e) {
      await journal.close();
      throw e;
    }
    return journal;
  }

  /**
   * The alert outbox: for each webhook and user, the oldest alert not delivered nor parked, when it is due
   * (`next_at ≤ now`), oldest first, up to `limit`.
   */
  outboxDue(now: number, limit: number): Promise<OutboxRow[]> {
    return this.statements.all<OutboxRow>(OUTBOX_DUE_SQL, [now, limit]);
  }

  /** An outbox row was acknowledged: gone. */
  async outboxDelivered(id: number): Promise<void> {
    await this.statements.run('DELETE FROM usage_alert_outbox WHERE id = ?', [id]);
  }

  /** Parked rows (of one user, or all) are due again, their attempts counted from 0. */
  async outboxResend(userId?: string): Promise<number> {
    const rows = await this.statements.all<{ id: number }>(
      `UPDATE usage_alert_outbox SET parked = 0, attempts = 0, next_at = 0 WHERE parked = 1${
        userId === undefined ? '' : ' AND user_id = ?'
      } RETURNING id`,
      userId === undefined ? [] : [userId],
    );
    return rows.length;
  }

  /** An attempt failed: the next one at `nextAt`, or parked for good. */
  async outboxFailed(
    id: number,
    attempts: number,
    nextAt: number,
    parked: boolean,
    error: string,
  ): Promise<void> {
    await this.statements.run(
      'UPDATE usage_alert_outbox SET attempts = ?, next_at = ?, parked = ?, last_error = ? WHERE id = ?',
      [attempts, nextAt, parked ? 1 : 0, error.slice(0, 200), id],
    );
  }

  /**
   * With `summary`: whether the summary holds the data directory's usage from before it existed (false for
   * a data directory of an earlier version until `buildSummary`).
   */
  summaryBuilt = false;
  /** Keeps the spending summary: the entries' sums go to it about once a second (`SUMS_INTERVAL_MS`). */
  private summary = false;

  /** Every user's summary counters of periods not ended at `now`. */
  summaryCounters(now: number): Promise<SummaryCounterRow[]> {
    return summaryCounters(this.statements, now);
  }

  /** The top users of the given billing months (see `UsageStore.topSpenders`). */
  summaryTop(
    by: 'calls' | 'tokens' | 'cost',
    periodKeys: readonly string[],
    limit: number,
  ): Promise<SpendingTotal[]> {
    return summaryTop(this.statements, by, periodKeys, limit);
  }

  /** Drops summary rows of ended periods. */
  pruneSummary(now: number): Promise<void> {
    return pruneSummary(this.statements, now);
  }

  /** Adds requests charged from the intent log to the summary, once each (see `spending-summary.ts`). */
  summarizeIntents(entries: { requestId: string; entry: string }[]): Promise<void> {
    return summarizeIntents(this.statements, entries);
  }

  /** Summarises the users' files of `dataDir` (see `buildSummary`); resolves with how many were read. */
  async buildSummary(
    dataDir: string,
    options: { driver: SqliteDriver; busyTimeoutMs: number; now: number },
  ): Promise<number> {
    const n = await buildSummary(this.statements, dataDir, options);
    this.summaryBuilt = true;
    const [{ seq }] = await this.statements.all<{ seq: number }>('SELECT seq FROM usage_summary_mark', []);
    this.marked(seq);
    return n;
  }

  /** Writes queued or committing, not yet in the journal. */
  get pending(): number {
    return this.queue.length + this.committing;
  }

  append(
    userId: string,
    write: JournaledWrite,
    done: (committed: boolean) => void,
    journaled: (seq: number) => void,
  ): void {
    this.appended++;
    this.queue.push({ userId, write, json: entryJson(userId, write), done, journaled });
    this.schedule();
  }

  /**
   * The user's database committed this row: drop it from the journal, in the next turn's commit.
   */
  forget(seq: number): void {
    if (this.summary && seq > this.mark) {
      this.held.push(seq);
      return;
    }
    this.forgotten.push(seq);
    this.schedule();
  }

  /**
   * Resolves true once the summary has received the sums of every entry committed before the call (with
   * `caughtUp` first: of every write appended before it), false after `deadlineMs`.
   */
  async summarized(deadlineMs = 5_000): Promise<boolean> {
    const target = this.journaledCount;
    const until = Date.now() + deadlineMs;
    while (this.summary && this.summedCount < target) {
      if (Date.now() > until) return false;
      this.sumsWanted = true;
      this.schedule();
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    return true;
  }

  /**
   * Resolves true once the writes appended before the call are in the journal (not those appended since:
   * under steady load the queue is never empty), false after `deadlineMs`.
   */
  async caughtUp(deadlineMs = 5_000): Promise<boolean> {
    const target = this.appended;
    const until = Date.now() + deadlineMs;
    while (this.journaledCount < target) {
      if (Date.now() > until) return false;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    return true;
  }

  /** Resolves true once everything queued (appends and forgets) has committed, false after `deadlineMs`. */
  async drain(deadlineMs = 5_000): Promise<boolean> {
    const until = Date.now() + deadlineMs;
    while (
      this.queue.length > 0 ||
      this.forgotten.length > 0 ||
      this.unsummed.count > 0 ||
      this.held.length > 0 ||
      this.running
    ) {
      if (Date.now() > until) return false;
      if (!this.running) {
        // A retry's backoff, or sums not yet due: now.
        this.sumsWanted = true;
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        this.running = true;
        void this.flush();
      }
      // A timer that holds the event loop: the caller is waiting on us (start-up, shutdown).
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return true;
  }

  async close(): Promise<void> {
    clearTimeout(this.retryTimer);
    clearInterval(this.checkpointTimer);
    await this.checkpointing;
    await this.checkpointer.close().catch(() => undefined);
    // The last connection to close checkpoints what is left.
    await this.statements.close().catch(() => undefined);
  }

  /**
   * A passive checkpoint when commits arrived since the last one (and every 25th tick whatever happened: the
   * outbox's and the summary's own writes), unless one is running. A failure leaves the log as it is
   * (nothing is lost; it grows until a later checkpoint succeeds).
   */
  private checkpoint(): void {
    if (this.unsummed.count > 0 && Date.now() - this.sumsAt >= this.sumsIntervalMs) this.schedule();
    if (this.checkpointing || (this.uncheckpointed === 0 && ++this.idleTicks < 25)) return;
    this.uncheckpointed = 0;
    this.idleTicks = 0;
    this.checkpointing = this.checkpointer
      .all('PRAGMA wal_checkpoint(PASSIVE)')
      .catch(() => (this.uncheckpointed += 1))
      .finally(() => (this.checkpointing = undefined));
  }

  /** The summary has every entry up to `seq`: forgotten entries held for it can go. */
  private marked(seq: number): void {
    this.mark = seq;
    if (this.held.length === 0) return;
    const still: number[] = [];
    for (const s of this.held) (s <= seq ? this.forgotten : still).push(s);
    this.held = still;
  }

  private schedule(): void {
    if (this.running || this.retryTimer) return;
    this.running = true;
    setImmediate(() => void this.flush());
  }

  private async flush(): Promise<void> {
    this.busySince = Date.now();
    const started = this.onCommit ? performance.now() : 0;
    const batch = this.queue;
    this.queue = [];
    this.committing = batch.length;
    const forgotten = this.forgotten;
    this.forgotten = [];
    // The summary's sums, when due, go in the first statement, after its entries: the sums of those and of
    // the entries committed since the last sums (`unsummed`), never of a later statement's (it may fail).
    const sumsDue =
      this.summary &&
      (this.sumsWanted || Date.now() - this.sumsAt >= this.sumsIntervalMs) &&
      this.unsummed.count + batch.length > 0;
    const carried = this.unsummed;
    if (sumsDue) {
      this.unsummed = new SummarySums();
      this.sumsWanted = false;
      this.sumsAt = Date.now();
    }
    // One statement per chunk, each atomic; the deletes in one more. Statements on one connection run in order.
    const chunks: Promise<Error | null>[] = [];
    for (let i = 0; i < Math.max(batch.length, sumsDue ? 1 : 0); i += MAX_ROWS_PER_STATEMENT) {
      const part = batch.slice(i, i + MAX_ROWS_PER_STATEMENT);
      const texts = part.map((e) => e.json);
      const withSums = sumsDue && i === 0;
      if (withSums) texts.push(carried.json(part));
      chunks.push(
        this.statements.run(INSERT_SQL, [jsonArray(texts)]).then(
          (last) => {
            // With the sums, the statement's last sequence number is theirs: the entries' are before it.
            const first = last - texts.length + 1;
            part.forEach((e, j) => {
              if (!e.failed) e.done(true);
              e.journaled(first + j);
            });
            this.journaledCount += part.length;
            if (withSums) {
              this.summedCount += carried.count + part.length;
              this.marked(last);
            } else if (this.summary) {
              for (const e of part) this.unsummed.add(e);
            }
            return null;
          },
          (error: Error) => {
            for (const e of part) {
              if (!e.failed) e.done(false);
              e.failed = true;
            }
            this.queue.unshift(...part);
            if (withSums) {
              this.unsummed.merge(carried);
              this.sumsWanted = true;
            }
            return error;
          },
        ),
      );
    }
    if (forgotten.length) {
      chunks.push(
        this.statements.run(DELETE_SQL, [JSON.stringify(forgotten)]).then(
          () => null,
          (error: Error) => {
            this.forgotten.push(...forgotten);
            return error;
          },
        ),
      );
    }
    const errors = (await Promise.all(chunks)).filter((e) => e !== null);
    this.committing = 0;
    this.busySince = 0;
    this.uncheckpointed++;
    if (errors.length) {
      this.failure = errors[0];
      this.running = false;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.schedule();
      }, this.retryDelay);
      this.retryTimer.unref();
      this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
      return;
    }
    this.failure = null;
    this.retryDelay = RETRY_MIN_MS;
    if (this.onCommit && batch.length > 0) this.onCommit(batch.length, (performance.now() - started) / 1000);
    if (this.queue.length > 0 || this.forgotten.length > 0 || (this.sumsWanted && this.unsummed.count > 0)) {
      setImmediate(() => void this.flush());
      return;
    }
    this.running = false;
  }
}
