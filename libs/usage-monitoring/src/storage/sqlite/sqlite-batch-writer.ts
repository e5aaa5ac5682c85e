import type { Database, Statement } from 'sqlite3';
import type { ApiRequestRecord, UsageEventRecord } from '../usage-store.interface';

/** A counter increment, summed per counter within one batch. */
export interface CounterDelta {
  userId: string;
  periodKey: string;
  scope: string;
  metric: string;
  periodEnd: number;
  delta: number;
}

export interface AlertRow {
  userId: string;
  periodKey: string;
  limitId: string;
  threshold: number;
  used: number;
  max: number;
  createdAt: number;
}

export interface PendingWrite {
  event?: UsageEventRecord;
  request?: ApiRequestRecord;
  alerts?: AlertRow[];
  /** Called once: `true` after the commit holding the write, `false` when a commit failed (it stays queued). */
  done?: (committed: boolean) => void;
}

const SQL = {
  event: `INSERT INTO usage_events (request_id, user_id, provider, model, endpoint, method, status_code,
      input_tokens, output_tokens, cost_micros, response_time_ms, request_bytes, response_bytes, user_agent, ip,
      searches, images, pages, estimated, outcome, period_key, occurred_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING`,
  request: `INSERT INTO api_requests (request_id, user_id, provider, path, method, status_code, duration_ms, occurred_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING`,
  counter: `INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
    VALUES (?, ?, ?, ?, ?, 0, ?, ?)
    ON CONFLICT (user_id, period_key, scope, metric) DO UPDATE SET used = used + excluded.used, updated_at = excluded.updated_at`,
  alert: `INSERT INTO usage_alerts (user_id, period_key, limit_id, threshold, used, max_value, created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
} as const;

type Statements = Record<keyof typeof SQL, Statement>;

const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 2_000;

/**
 * Group commit for one SQLite database: every write queued while a transaction runs goes into the next
 * one. Ledger rows and the counter deltas they imply commit together, so counters always equal the
 * ledger. A failed batch is rolled back whole and retried, so each write commits exactly once.
 */
export class SqliteBatchWriter {
  private queue: PendingWrite[] = [];
  private deltas = new Map<string, CounterDelta>();
  private running = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_MIN_MS;
  private drainWaiters: (() => void)[] = [];
  /** The last commit failure; cleared by the next successful commit. */
  failure: Error | null = null;

  private constructor(
    private readonly db: Database,
    private readonly statements: Statements,
    private readonly onDrained: () => void,
  ) {}

  static async open(db: Database, onDrained: () => void): Promise<SqliteBatchWriter> {
    const entries = await Promise.all(
      Object.entries(SQL).map(
        ([name, sql]) =>
          new Promise<[string, Statement]>((resolve, reject) => {
            const stmt = db.prepare(sql, (err) => (err ? reject(err) : resolve([name, stmt])));
          }),
      ),
    );
    return new SqliteBatchWriter(db, Object.fromEntries(entries) as Statements, onDrained);
  }

  /** Writes not yet committed (including ones whose response was already released after a failure). */
  get pending(): number {
    return this.queue.length + (this.running ? 1 : 0);
  }

  enqueue(write: PendingWrite, deltas: readonly CounterDelta[]): void {
    this.queue.push(write);
    for (const d of deltas) this.addDelta(d);
    if (!this.running && !this.retryTimer) {
      this.running = true;
      setImmediate(() => void this.flush());
    }
  }

  /** Resolves once everything queued so far has committed (or `deadline` passes). */
  async drain(deadlineMs = 5_000): Promise<boolean> {
    const until = Date.now() + deadlineMs;
    while (this.queue.length > 0 || this.running) {
      if (Date.now() > until) return false;
      if (this.retryTimer) {
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        this.running = true;
        void this.flush();
      }
      await new Promise<void>((resolve) => {
        this.drainWaiters.push(resolve);
        setTimeout(resolve, 100).unref();
      });
    }
    return true;
  }

  async finalize(): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await Promise.all(
      Object.values(this.statements).map((s) => new Promise<void>((resolve) => s.finalize(() => resolve()))),
    );
  }

  private addDelta(d: CounterDelta): void {
    const key = `${d.periodKey}\u0001${d.scope}\u0001${d.metric}`;
    const prev = this.deltas.get(key);
    if (prev) prev.delta += d.delta;
    else this.deltas.set(key, { ...d });
  }

  private async flush(): Promise<void> {
    const batch = this.queue;
    const deltas = this.deltas;
    this.queue = [];
    this.deltas = new Map();
    try {
      await this.commit(batch, deltas);
    } catch (e) {
      this.failure = e as Error;
      // Keep the batch, ahead of anything queued since, and release the responses waiting on it.
      this.queue = batch.concat(this.queue);
      for (const d of deltas.values()) this.addDelta(d);
      for (const w of batch) {
        w.done?.(false);
        w.done = undefined;
      }
      this.running = false;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.running = true;
        void this.flush();
      }, this.retryDelay);
      this.retryTimer.unref();
      this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
      this.wakeDrainers();
      return;
    }
    this.failure = null;
    this.retryDelay = RETRY_MIN_MS;
    for (const w of batch) w.done?.(true);
    if (this.queue.length > 0) {
      setImmediate(() => void this.flush());
      return;
    }
    this.running = false;
    this.wakeDrainers();
    this.onDrained();
  }

  private wakeDrainers(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  private commit(batch: PendingWrite[], deltas: Map<string, CounterDelta>): Promise<void> {
    const { db, statements: s } = this;
    return new Promise((resolve, reject) => {
      db.run('BEGIN IMMEDIATE', (beginErr: Error | null) => {
        if (beginErr) return reject(beginErr);
        let outstanding = 1; // released after the last statement is queued
        let firstError: Error | null = null;
        const finish = () => {
          db.run(firstError ? 'ROLLBACK' : 'COMMIT', (endErr: Error | null) => {
            if (firstError) return reject(firstError);
            if (endErr) return db.run('ROLLBACK', () => reject(endErr));
            resolve();
          });
        };
        const done = (err: Error | null) => {
          if (err && !firstError) firstError = err;
          if (--outstanding === 0) finish();
        };
        const run = (stmt: Statement, params: unknown[]) => {
          outstanding++;
          stmt.run(params, done);
        };
        for (const w of batch) {
          const e = w.event;
          if (e) {
            run(s.event, [
              e.requestId,
              e.userId,
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
              e.estimated ? 1 : 0,
              e.outcome,
              e.periodKey,
              e.occurredAt,
            ]);
          }
          const r = w.request;
          if (r) {
            run(s.request, [
              r.requestId,
              r.userId,
              r.provider,
              r.path,
              r.method,
              r.statusCode,
              r.durationMs,
              r.occurredAt,
            ]);
          }
          if (w.alerts) {
            for (const a of w.alerts) {
              run(s.alert, [a.userId, a.periodKey, a.limitId, a.threshold, a.used, a.max, a.createdAt]);
            }
          }
        }
        const now = Date.now();
        for (const d of deltas.values()) {
          if (d.delta !== 0)
            run(s.counter, [d.userId, d.periodKey, d.scope, d.metric, d.delta, d.periodEnd, now]);
        }
        done(null);
      });
    });
  }
}
