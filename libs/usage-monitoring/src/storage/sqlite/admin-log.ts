import { join } from 'node:path';
import { newRequestId } from '../../metering/request-id';
import {
  ADJUSTMENT_COLUMNS,
  adjustmentOf,
  overrideOf,
  type AdjustmentRow,
  type OverrideRow,
} from '../adjustment-row';
import type {
  CounterAdjustment,
  LimitOverrideChange,
  StoredAdjustment,
  StoredOverride,
} from '../usage-store.interface';
import { openConnection, type SqliteConnection, type SqliteDriver } from './sqlite-connection';
import { synchronousPragma } from './user-data-source.factory';
import { counterKey } from '../counter-key';

/** The admin file, directly inside `dataDir` (a dot-name, which no user's file can have). */
export const ADMIN_FILE = '.usage-admin.sqlite';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS usage_adjustments (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  user_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  scope TEXT NOT NULL,
  metric TEXT NOT NULL,
  period TEXT NOT NULL,
  period_key TEXT,
  period_end INTEGER,
  amount INTEGER,
  max_value INTEGER,
  until INTEGER,
  actor TEXT NOT NULL,
  reason TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_adjustments_user ON usage_adjustments (user_id, seq);
CREATE INDEX IF NOT EXISTS usage_adjustments_counter ON usage_adjustments (period_end, kind);
CREATE TABLE IF NOT EXISTS usage_overrides (
  user_id TEXT NOT NULL,
  scope TEXT NOT NULL,
  metric TEXT NOT NULL,
  period TEXT NOT NULL,
  max_value INTEGER NOT NULL,
  until INTEGER,
  PRIMARY KEY (user_id, scope, metric, period)
);`;

/** What grants added to, and resets took from, one counter of a period. */
export interface Allowance {
  granted: number;
  forgiven: number;
}

/**
 * Grants and resets of the per-user store, in memory: user → counter key → allowance. Read on every
 * admission of a user who has one (one map lookup for everyone else).
 */
export class AllowanceBook {
  private readonly byUser = new Map<string, Map<string, Allowance>>();

  of(userId: string): Map<string, Allowance> | undefined {
    return this.byUser.size === 0 ? undefined : this.byUser.get(userId);
  }

  add(userId: string, key: string, granted: number, forgiven: number): void {
    let counters = this.byUser.get(userId);
    if (!counters) this.byUser.set(userId, (counters = new Map()));
    const a = counters.get(key);
    if (a) {
      a.granted += granted;
      a.forgiven += forgiven;
    } else counters.set(key, { granted, forgiven });
  }
}

const INSERT = `INSERT INTO usage_adjustments (id, user_id, kind, scope, metric, period, period_key, period_end,
  amount, max_value, until, actor, reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;

/**
 * The per-user store's admin changes: the audit history of grants, resets and overrides (append-only) and
 * the overrides in force, in one SQLite file beside the journal. Changes run one at a time.
 */
export class AdminLog {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(private readonly connection: SqliteConnection) {}

  static async open(
    dataDir: string,
    options: { driver: SqliteDriver; busyTimeoutMs: number; synchronous: 'normal' | 'full' },
  ): Promise<AdminLog> {
    const connection = await openConnection(options.driver, join(dataDir, ADMIN_FILE), {
      mustExist: false,
      busyTimeoutMs: options.busyTimeoutMs,
      pragmas: `PRAGMA journal_mode = WAL; ${synchronousPragma(options.synchronous)}; ${SCHEMA}`,
    });
    return new AdminLog(connection);
  }

  /** Grants and resets of periods not ended at `now`, into `book`. */
  async loadAllowances(book: AllowanceBook, now: number): Promise<void> {
    const rows = await this.connection.all<{
      user_id: string;
      period_key: string;
      scope: string;
      metric: string;
      granted: number;
      forgiven: number;
    }>(
      `SELECT user_id, period_key, scope, metric,
         sum(CASE WHEN kind = 'grant' THEN amount ELSE 0 END) AS granted,
         sum(CASE WHEN kind = 'reset' THEN amount ELSE 0 END) AS forgiven
       FROM usage_adjustments WHERE kind IN ('grant', 'reset') AND period_end > ?
       GROUP BY user_id, period_key, scope, metric`,
      [now],
    );
    for (const r of rows)
      book.add(r.user_id, counterKey(r.period_key, r.scope, r.metric), Number(r.granted), Number(r.forgiven));
  }

  /**
   * Appends a grant or reset. Changes run one at a time: `amountOf` (what a reset forgives, read when its
   * turn comes) and `applied` (once the row is durable) are never interleaved with another change's.
   */
  recordCounter(
    change: CounterAdjustment,
    amountOf: () => Promise<number>,
    applied: (amount: number) => void,
  ): Promise<StoredAdjustment> {
    return this.serial(async () => {
      const amount = await amountOf();
      const row: AdjustmentRow = {
        ...this.base(change),
        period_key: change.periodKey,
        amount,
        max_value: null,
        until: null,
      };
      await this.connection.run(INSERT, insertValues(row, change.periodEnd));
      applied(amount);
      return adjustmentOf(row);
    });
  }

  /** Stores or clears an override and appends it, in one transaction. */
  recordOverride(change: LimitOverrideChange): Promise<StoredAdjustment> {
    return this.serial(async () => {
      const row: AdjustmentRow = {
        ...this.base(change),
        period_key: null,
        amount: null,
        max_value: change.max,
        until: change.until,
      };
      const c = this.connection;
      await c.exec('BEGIN IMMEDIATE');
      try {
        if (change.kind === 'override') {
          await c.run(
            `INSERT INTO usage_overrides (user_id, scope, metric, period, max_value, until) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (user_id, scope, metric, period) DO UPDATE SET max_value = excluded.max_value, until = excluded.until`,
            [change.userId, change.scope, change.metric, change.period, change.max, change.until],
          );
        } else {
          await c.run(
            'DELETE FROM usage_overrides WHERE user_id = ? AND scope = ? AND metric = ? AND period = ?',
            [change.userId, change.scope, change.metric, change.period],
          );
        }
        await c.run(INSERT, insertValues(row, null));
        await c.exec('COMMIT');
      } catch (e) {
        await c.exec('ROLLBACK').catch(() => undefined);
        throw e;
      }
      return adjustmentOf(row);
    });
  }

  async overrides(now: number, userId?: string): Promise<StoredOverride[]> {
    const rows = await this.connection.all<OverrideRow>(
      `SELECT user_id, scope, metric, period, max_value, until FROM usage_overrides
       WHERE (until IS NULL OR until > ?) ${userId === undefined ? '' : 'AND user_id = ?'}`,
      userId === undefined ? [now] : [now, userId],
    );
    return rows.map((r) => overrideOf(r, r.user_id));
  }

  async adjustments(userId: string, limit: number): Promise<StoredAdjustment[]> {
    const rows = await this.connection.all<AdjustmentRow>(
      `SELECT ${ADJUSTMENT_COLUMNS} FROM usage_adjustments WHERE user_id = ? ORDER BY seq DESC LIMIT ?`,
      [userId, limit],
    );
    return rows.map(adjustmentOf);
  }

  async close(): Promise<void> {
    await this.queue.catch(() => undefined);
    await this.connection.finalizeStatements();
    await this.connection.close();
  }

  private base(change: CounterAdjustment | LimitOverrideChange) {
    return {
      id: newRequestId(),
      user_id: change.userId,
      kind: change.kind,
      scope: change.scope,
      metric: change.metric,
      period: change.period,
      actor: change.actor,
      reason: change.reason,
      created_at: change.now,
    };
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }
}

function insertValues(r: AdjustmentRow, periodEnd: number | null): unknown[] {
  return [
    r.id,
    r.user_id,
    r.kind,
    r.scope,
    r.metric,
    r.period,
    r.period_key,
    periodEnd,
    r.amount,
    r.max_value,
    r.until,
    r.actor,
    r.reason,
    r.created_at,
  ];
}
