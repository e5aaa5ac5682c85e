import type { UsageAlert } from '../../alerts/usage-alert.interface';
import { withoutNul } from '../settlement';
import { counterKey } from '../counter-key';
import type { SqliteConnection } from './sqlite-connection';
import type { ApiRequestRecord, UsageEventRecord } from '../usage-store.interface';

/** A counter increment implied by a ledger row. */
export interface CounterDelta {
  periodKey: string;
  scope: string;
  metric: string;
  periodEnd: number;
  amount: number;
}

/** One settlement: a ledger row with its counter deltas, or a bare request row. */
export interface PendingWrite {
  event?: UsageEventRecord;
  deltas?: CounterDelta[];
  /** Only for requests without a ledger row (`recordAllRequests`); a ledger row writes its own. */
  request?: ApiRequestRecord;
  alerts?: UsageAlert[];
  /**
   * Set when a write failed once. It is retried in a statement of its own, carrying its own deltas, so
   * that even a statement that committed but reported failure can only be skipped whole, never undercount.
   */
  retried?: boolean;
  /** Called once: `true` after the statement holding the write committed, `false` when it failed (it stays queued). */
  done?: (committed: boolean) => void;
  /** Called when the write has committed, also after retries (`done` is called once, on the first attempt). */
  committed?: () => void;
  /** The write's row in the journal, when it came through one. */
  journalSeq?: number;
  /**
   * The row's column values as JSON (`rowJson`), made once per write: the journal stores it as it is and
   * the user's database inserts it as it is. A write read back from the journal has only this (and
   * `kind`), not `event` or `request`.
   */
  row?: string;
  kind?: 'event' | 'request';
}

interface ChunkResult {
  rows: PendingWrite[];
  error: Error | null;
}

export const EVENT_COLUMNS = [
  'request_id',
  'user_id',
  'provider',
  'model',
  'endpoint',
  'method',
  'status_code',
  'input_tokens',
  'output_tokens',
  'cost_micros',
  'response_time_ms',
  'request_bytes',
  'response_bytes',
  'user_agent',
  'ip',
  'searches',
  'images',
  'pages',
  'estimated',
  'outcome',
  'period_key',
  'occurred_at',
  'counter_deltas',
  'cached_input_tokens',
  'cache_write_tokens',
  'reasoning_tokens',
  'price_version',
  'shadow_refused',
];
const REQUEST_COLUMNS = [
  'request_id',
  'user_id',
  'provider',
  'path',
  'method',
  'status_code',
  'duration_ms',
  'occurred_at',
];
const ALERT_SQL = `INSERT INTO usage_alerts (user_id, period_key, limit_id, threshold, used, max_value, created_at)
  VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`;

/** Rows per INSERT statement at most (a statement holds SQLite's write lock while it runs). */
export const MAX_ROWS_PER_STATEMENT = 512;
export const RETRY_MIN_MS = 50;
export const RETRY_MAX_MS = 2_000;

/**
 * `INSERT … SELECT` over `json_each(?)`: a chunk's rows travel as one JSON array bound to one parameter.
 * Binding 23 parameters per row cost ~9.6 µs of main-thread time per row; `JSON.stringify` of the rows
 * ~2.3 µs, for the same total CPU (the parsing moves to SQLite's thread). The user id, the same on every
 * row of a user's database, is bound as the first parameter (JSON text cannot carry a NUL through SQLite
 * intact); the chunk's summed counter deltas go on its last row (`k`, the row's index, bound next to
 * them), so that each row's JSON is the same text the journal holds. Parameters appear in that order,
 * before `json_each`, so plain `?` placeholders serve both drivers.
 *
 * Each row's text is read once, in a subquery SQLite does not flatten (`LIMIT -1 OFFSET 0`): referenced
 * directly, `json_each`'s `value` is rendered anew for each of the ~28 columns that read it, and the
 * SQLite that `sqlite3` bundles (3.44) then finds each rendering in its parse cache by comparing the text.
 * In a scratch measurement of 5,000 rows (`sqlite3`, 2026-12-05), SQLite's CPU per row: 17–20 µs instead of
 * 29–31 in 25-row statements, 6.4–7.2 instead of 20.7–23.2 in 512-row ones.
 */
function insertSql(table: string, columns: string[]): string {
  const picks = columns
    .map((c, i) =>
      c === 'user_id' ? '?' : c === 'counter_deltas' ? 'CASE WHEN k = ? THEN ? END' : `v ->> ${i}`,
    )
    .join(', ');
  return `INSERT INTO ${table} (${columns.join(', ')}) SELECT ${picks}
    FROM (SELECT key AS k, value AS v FROM json_each(?) LIMIT -1 OFFSET 0) WHERE true
    ON CONFLICT (request_id) DO NOTHING`;
}

const EVENT_SQL = insertSql('usage_events', EVENT_COLUMNS);
const REQUEST_SQL = insertSql('api_requests', REQUEST_COLUMNS);

/** A write's row values as JSON, made once (see `PendingWrite.row`). */
export function rowJson(w: PendingWrite): string {
  return (w.row ??= JSON.stringify(w.event ? eventRow(w) : requestRow(w)));
}

/**
 * JSON texts as one JSON array, in one flat string: `[${texts.join(',')}]` would be a concatenation that
 * the driver flattens when it binds it, a second copy of every row's text. Takes `texts` over (its first
 * and last items get the brackets): pass an array made for the call.
 */
export function jsonArray(texts: string[]): string {
  if (texts.length === 0) return '[]';
  texts[0] = '[' + texts[0];
  texts[texts.length - 1] += ']';
  return texts.join(',');
}

/** Whether a write is a ledger row or a bare request row. */
export function kindOf(w: PendingWrite): 'event' | 'request' | undefined {
  return w.kind ?? (w.event ? 'event' : w.request ? 'request' : undefined);
}

/** The ledger row's column values, in `EVENT_COLUMNS` order (`counter_deltas` is bound per chunk). */
function eventRow(w: PendingWrite): unknown[] {
  const e = w.event!;
  return [
    e.requestId,
    null,
    e.provider,
    withoutNul(e.model),
    withoutNul(e.endpoint),
    e.method,
    e.statusCode,
    e.inputTokens,
    e.outputTokens,
    e.costMicros,
    e.responseTimeMs,
    e.requestBytes,
    e.responseBytes,
    withoutNul(e.userAgent),
    e.ip,
    e.searches,
    e.images,
    e.pages,
    e.estimated ? 1 : 0,
    e.outcome,
    e.periodKey,
    e.occurredAt,
    null,
    e.cachedInputTokens,
    e.cacheWriteTokens,
    e.reasoningTokens,
    withoutNul(e.priceVersion),
    e.shadowRefused ?? null,
  ];
}

function requestRow(w: PendingWrite): unknown[] {
  const r = w.request!;
  return [
    r.requestId,
    null,
    r.provider,
    withoutNul(r.path),
    r.method,
    r.statusCode,
    r.durationMs,
    r.occurredAt,
  ];
}

/**
 * The deltas as a journal entry carries them: `[[periodKey, scope, metric, periodEnd, amount], ...]`
 * (`JSON.stringify` of those arrays), each from its counter's text up to the amount, made once per counter
 * and period end. Arrays rather than objects: an entry of three deltas is 430 bytes instead of 580, which
 * SQLite parses, stores and checkpoints for every request in the journal, and the intent log writes too (a
 * scratch measurement, 2026-12-06: 13.8 → 12.1 µs of CPU per entry inserted, medians of four rounds).
 */
export function deltasJson(deltas: readonly CounterDelta[]): string {
  let text = '[';
  for (let i = 0; i < deltas.length; i++) {
    const d = deltas[i];
    text += (i === 0 ? '' : ',') + deltaPrefix(d) + (Number.isFinite(d.amount) ? d.amount : 'null') + ']';
  }
  return text + ']';
}

/** A delta's fields in the order `deltasJson` writes them (format 3 of the journal's entries). */
export const DELTA_FIELDS = ['periodKey', 'scope', 'metric', 'periodEnd', 'amount'] as const;

/** The deltas of `deltasJson`'s text, read back. */
export function deltasOf(compact: readonly (readonly unknown[])[]): CounterDelta[] {
  return compact.map(([periodKey, scope, metric, periodEnd, amount]) => ({
    periodKey: periodKey as string,
    scope: scope as string,
    metric: metric as string,
    periodEnd: periodEnd as number,
    amount: amount as number,
  }));
}

function deltaPrefix(d: CounterDelta): string {
  const key = counterKey(d.periodKey, d.scope, d.metric);
  let cached = deltaPrefixes.get(key);
  if (cached?.periodEnd !== d.periodEnd) {
    // Periods come and go (a daily limit has new counters every day): start afresh now and then.
    if (deltaPrefixes.size >= 4096) deltaPrefixes.clear();
    const text = `[${JSON.stringify(d.periodKey)},${JSON.stringify(d.scope)},${JSON.stringify(d.metric)},${JSON.stringify(d.periodEnd)},`;
    deltaPrefixes.set(key, (cached = { periodEnd: d.periodEnd, text }));
  }
  return cached.text;
}
const deltaPrefixes = new Map<string, { periodEnd: number; text: string }>();

/** Adds `deltas` to `sum`, by counter (`counterKey`); a counter's first delta is copied, the caller's stay as they are. */
export function addDeltas(sum: Map<string, CounterDelta>, deltas: readonly CounterDelta[] | undefined): void {
  for (const d of deltas ?? []) {
    const key = counterKey(d.periodKey, d.scope, d.metric);
    const prev = sum.get(key);
    if (prev) prev.amount += d.amount;
    else
      sum.set(key, {
        periodKey: d.periodKey,
        scope: d.scope,
        metric: d.metric,
        periodEnd: d.periodEnd,
        amount: d.amount,
      });
  }
}

/** The summed deltas of a chunk's rows, as the trigger reads them. */
function summedDeltas(rows: PendingWrite[]): string | null {
  const sum = new Map<string, CounterDelta>();
  for (const w of rows) addDeltas(sum, w.deltas);
  if (sum.size === 0) return null;
  return JSON.stringify(
    [...sum.values()].map((d) => ({ p: d.periodKey, s: d.scope, m: d.metric, a: d.amount, e: d.periodEnd })),
  );
}

/**
 * Spaces the delayed commits of the users' files. Each user's journaled rows wait `baseMs`, or
 * 10 ms for every user (open or parked) whose rows are waiting, whichever is longer (at most 60 s): one hot user
 * is committed every `baseMs`, and a thousand users each with a request or two a second are committed about
 * every 10 s with their rows together, instead of a thousand small commits a second (each one writes the
 * same few pages of its file, whatever its number of rows).
 */
export class ApplyPacer {
  private waiting = 0;
  /** Users kept in memory with their database closed whose rows are waiting (`ParkedLedgers` sets it). */
  parkedWaiting = 0;

  constructor(readonly baseMs: number) {}

  /** Users whose rows are waiting now (open ones; `parkedWaiting` counts the others). */
  get waitingUsers(): number {
    return this.waiting;
  }

  /** How long rows wait while this many users' rows (open or parked) are waiting (ms). */
  delayMs(): number {
    const users = this.waiting + this.parkedWaiting;
    return Math.min(MAX_APPLY_WAIT_MS, Math.max(this.baseMs, users * APPLY_MS_PER_WAITING_USER));
  }

  /** A user's rows start waiting: for how long (ms). */
  start(): number {
    this.waiting++;
    return this.delayMs();
  }

  /** They stopped waiting (their commit started, or the file closed). */
  stop(): void {
    this.waiting--;
  }
}

/** See `ApplyPacer`: 10 ms per waiting user is about 100 user-file commits a second at most. */
export const APPLY_MS_PER_WAITING_USER = 10;
/** The longest a user's rows wait (the largest `applyDelayMs` too). */
const MAX_APPLY_WAIT_MS = 60_000;

/**
 * Group commit for one SQLite database. Every settlement queued while a write is in flight goes into
 * the next one: one INSERT per chunk of up to 512 ledger rows, each statement atomic, in which the
 * `usage_events_apply` trigger also writes the request rows and adds the chunk's summed counter deltas
 * (carried by its last row). Ledger rows and their counter deltas commit together or not at all; a
 * retried row (same request id) is skipped whole, so each write counts exactly once.
 */
export class SqliteBatchWriter {
  private queue: PendingWrite[] = [];
  private running = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private delayTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_MIN_MS;
  private drainWaiters: (() => void)[] = [];
  /** The last commit failure; cleared by the next successful commit. */
  failure: Error | null = null;
  /** When the commit now running started (`Date.now()`), 0 when none runs. */
  busySince = 0;

  constructor(
    private readonly statements: SqliteConnection,
    /** The user whose database this is: every row carries it. */
    private readonly userId: string,
    private readonly onDrained: () => void,
    /**
     * Spaces commits: the first queued write waits as long as the pacer says for others before a commit
     * starts. Without one, a commit starts in the next turn. Only for writes already durable elsewhere (the
     * journal): a delayed commit holds many rows.
     */
    private readonly pacer?: ApplyPacer,
  ) {}

  /** Starts the delay before the next commit. */
  private wait(): void {
    if (this.delayTimer || !this.pacer) return;
    this.delayTimer = setTimeout(() => this.flushNow(), this.pacer.start());
    this.delayTimer.unref();
  }

  /** Ends the delay, if one runs (the pacer counts waiting users). */
  private stopWaiting(): void {
    if (!this.delayTimer) return;
    clearTimeout(this.delayTimer);
    this.delayTimer = undefined;
    this.pacer!.stop();
  }

  /** Writes not yet committed (including ones whose response was already released after a failure). */
  get pending(): number {
    return this.queue.length + (this.running ? 1 : 0);
  }

  enqueue(write: PendingWrite): void {
    this.queue.push(write);
    if (this.running || this.retryTimer) return;
    if (!this.pacer) {
      this.running = true;
      setImmediate(() => void this.flush());
    } else if (!this.delayTimer) {
      this.wait();
    } else if (this.queue.length >= MAX_ROWS_PER_STATEMENT) {
      this.flushNow();
    }
  }

  /** Starts a commit now instead of when the delay or the retry backoff ends. */
  private flushNow(): void {
    this.stopWaiting();
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.running = true;
    void this.flush();
  }

  /** Takes the writes still queued (after a failed `drain`, before closing). */
  takeQueued(): PendingWrite[] {
    const q = this.queue;
    this.queue = [];
    return q;
  }

  /**
   * Resolves once everything queued so far has committed (true), or false when `deadlineMs` has passed
   * (after at least one attempt, and never while a commit is running: what failed is back in the queue).
   */
  async drain(deadlineMs = 5_000): Promise<boolean> {
    const until = Date.now() + deadlineMs;
    let attempted = false;
    while (this.queue.length > 0 || this.running) {
      if (!this.running) {
        if (attempted && Date.now() >= until) return false;
        this.flushNow();
        attempted = true;
      }
      await new Promise<void>((resolve) => {
        this.drainWaiters.push(resolve);
        setTimeout(resolve, 100).unref();
      });
    }
    return true;
  }

  async finalize(): Promise<void> {
    clearTimeout(this.retryTimer);
    this.stopWaiting();
    await this.statements.finalizeStatements();
  }

  private async flush(): Promise<void> {
    this.busySince = Date.now();
    try {
      await this.flushOnce();
    } finally {
      this.busySince = 0;
    }
  }

  private async flushOnce(): Promise<void> {
    const batch = this.queue;
    this.queue = [];
    const events: PendingWrite[] = [];
    const requests: PendingWrite[] = [];
    const alerts: UsageAlert[] = [];
    for (const w of batch) {
      const kind = kindOf(w);
      if (kind === 'event') events.push(w);
      else if (kind === 'request') requests.push(w);
      if (w.alerts) alerts.push(...w.alerts);
    }
    const results = await Promise.all([
      ...this.chunked(events, EVENT_SQL, true),
      ...this.chunked(requests, REQUEST_SQL, false),
    ]);
    const failed: PendingWrite[] = [];
    let firstError: Error | null = null;
    for (const r of results) {
      if (r.error) {
        firstError ??= r.error;
        failed.push(...r.rows);
      } else {
        for (const w of r.rows) {
          w.done?.(true);
          w.committed?.();
        }
      }
    }
    // Alerts are written after their ledger rows; a lost alert row never changes usage.
    if (alerts.length) {
      await Promise.all(
        alerts.map((a) =>
          this.statements
            .run(ALERT_SQL, [a.userId, a.periodKey, a.limitId, a.threshold, a.used, a.max, a.at])
            .catch(() => undefined),
        ),
      );
    }
    if (firstError) {
      this.retryLater(firstError, failed);
      return;
    }
    this.failure = null;
    this.retryDelay = RETRY_MIN_MS;
    if (this.queue.length > 0 && !this.pacer) {
      setImmediate(() => void this.flush());
      return;
    }
    this.running = false;
    if (this.queue.length > 0) {
      this.wait();
      this.wakeDrainers(); // a drain in progress commits these now
      return;
    }
    this.wakeDrainers();
    this.onDrained();
  }

  /** Puts failed writes back in front, releases the responses waiting on them, and retries with backoff. */
  private retryLater(error: Error, failed: PendingWrite[]): void {
    this.failure = error;
    for (const w of failed) {
      w.retried = true;
      w.alerts = undefined;
      w.done?.(false);
      w.done = undefined;
    }
    this.queue = failed.concat(this.queue);
    this.running = false;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.running = true;
      void this.flush();
    }, this.retryDelay);
    this.retryTimer.unref();
    this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
    this.wakeDrainers();
  }

  /** One statement per chunk of rows (a retried row alone), all queued at once. */
  private chunked(rows: PendingWrite[], sql: string, withDeltas: boolean): Promise<ChunkResult>[] {
    const out: Promise<ChunkResult>[] = [];
    let i = 0;
    while (i < rows.length) {
      // Retried writes come first in the queue (failed ones are put back in front), one per statement.
      const size = rows[i].retried ? 1 : Math.min(MAX_ROWS_PER_STATEMENT, rows.length - i);
      const part = rows.slice(i, i + size);
      i += size;
      // The chunk's last row carries the summed counter deltas; one statement applies them all or none.
      const json = jsonArray(part.map(rowJson));
      const params = withDeltas
        ? [this.userId, part.length - 1, summedDeltas(part), json]
        : [this.userId, json];
      out.push(
        this.statements.run(sql, params).then(
          () => ({ rows: part, error: null }),
          (error: Error) => ({ rows: part, error }),
        ),
      );
    }
    return out;
  }

  private wakeDrainers(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}
