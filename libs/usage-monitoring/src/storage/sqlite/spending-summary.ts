import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { SpendingTotal, UsageEventRecord } from '../usage-store.interface';
import { addDeltas, type CounterDelta, DELTA_FIELDS, EVENT_COLUMNS } from './sqlite-batch-writer';
import { openConnection, type SqliteConnection, type SqliteDriver } from './sqlite-connection';

/**
 * Who is spending, for the admin API's `list` and `top`, without opening every user's file: a summary
 * index in the journal's database. Users are keyed by the JSON text of their id (`"alice"`), which
 * carries any character, NUL included.
 *
 * - `usage_summary_counters`: every user's counters of periods not yet ended (settled usage).
 * - `usage_summary_totals`: every user's ledger rows, tokens and cost per billing month.
 *
 * It is written with the journal, in batches: about once a second (`SUMS_INTERVAL_MS`), a statement that
 * inserts journal entries carries, as its last row, the sums (`SummarySums`) of its own entries and of every
 * entry committed since the previous sums; a trigger adds them to the summary, records that row's sequence
 * number in `usage_summary_mark` (every entry up to it is summarised) and deletes it. An entry above the mark
 * stays in the journal (its user's file may have it, the journal does not forget it) until a mark covers it,
 * and at start-up the entries a crash left above the mark are summed (`summarizeJournal`). So what the journal
 * holds, or has handed on to a user's file, is in the summary once, and nothing else; a crash cannot split
 * them. Summed per statement instead, a thousand users' entries touched some 30 scattered pages of the
 * summary per commit: 20–25 µs per request of SQLite's time, by a scratch measurement (2026-12-06). Requests a crash interrupted (durable intent) are
 * charged to their users' files at start-up without the journal; they reach the summary through
 * `usage_summary_intents`, once per request id, before their intent is forgotten. A data directory of an
 * earlier version (no summary yet) is summarised from its users' files once, at start-up.
 */
const col = (name: string): number => EVENT_COLUMNS.indexOf(name);

/**
 * A counter delta's field in SQL, `d` being a `json_each` row over an entry's deltas: an array in this
 * version's entries (`deltasJson`), an object in format 2's, which an upgrade may find in the journal.
 */
const delta = (name: (typeof DELTA_FIELDS)[number]): string =>
  `iif(d.type = 'array', d.value ->> ${DELTA_FIELDS.indexOf(name)}, d.value ->> '${name}')`;
const IS_DELTA = `d.type IN ('array', 'object')`;

/** The upserts of one journal entry (`entry`: an SQL expression of its text) into the summary. */
function upsertsOf(entry: string): string {
  const row = (c: string) => `${entry} ->> '$[3][${col(c)}]'`;
  return `
  INSERT INTO usage_summary_totals (user_id, period_key, calls, tokens, cost_micros)
  VALUES (${entry} -> 0, ${row('period_key')}, 1, ${row('input_tokens')} + ${row('output_tokens')}, ${row('cost_micros')})
  ON CONFLICT DO UPDATE SET calls = calls + 1, tokens = tokens + excluded.tokens,
    cost_micros = cost_micros + excluded.cost_micros;
  INSERT INTO usage_summary_counters (user_id, period_key, scope, metric, period_end, used)
  SELECT ${entry} -> 0, ${delta('periodKey')}, ${delta('scope')}, ${delta('metric')},
    ${delta('periodEnd')}, ${delta('amount')}
  FROM json_each(${entry}, '$[4]') AS d WHERE ${IS_DELTA}
  ON CONFLICT DO UPDATE SET used = used + excluded.used;`;
}

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS usage_summary_counters (
    user_id TEXT NOT NULL, period_key TEXT NOT NULL, scope TEXT NOT NULL, metric TEXT NOT NULL,
    period_end INTEGER NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (user_id, period_key, scope, metric)) WITHOUT ROWID`,
  'CREATE INDEX IF NOT EXISTS usage_summary_counters_end ON usage_summary_counters (period_end)',
  `CREATE TABLE IF NOT EXISTS usage_summary_totals (
    period_key TEXT NOT NULL, user_id TEXT NOT NULL,
    calls INTEGER NOT NULL, tokens INTEGER NOT NULL, cost_micros INTEGER NOT NULL,
    PRIMARY KEY (period_key, user_id)) WITHOUT ROWID`,
  'CREATE TABLE IF NOT EXISTS usage_summary_intents (request_id TEXT PRIMARY KEY, entry TEXT NOT NULL) WITHOUT ROWID',
  'CREATE TABLE IF NOT EXISTS usage_summary_state (id INTEGER PRIMARY KEY CHECK (id = 1), built_at INTEGER NOT NULL)',
  // Earlier versions summed each entry in a trigger of its own. SQLite's time per entry, 27 entries of 4
  // counter deltas per statement (a scratch measurement, 2026-12-06): 40 µs with that trigger, 16–24 µs
  // with a statement's sums (below), 7–10 µs with no summary.
  'DROP TRIGGER IF EXISTS usage_summary_fill',
  // Every journal entry up to `seq` is in the summary. Created at the journal's sequence number: an earlier
  // version summed each statement, or each entry, as it committed.
  'CREATE TABLE IF NOT EXISTS usage_summary_mark (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)',
  `INSERT OR IGNORE INTO usage_summary_mark (id, seq)
  SELECT 1, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'usage_journal'), 0)`,
  // The sums of each statement, before they were batched (without the mark).
  'DROP TRIGGER IF EXISTS usage_summary_sums',
  // Sums (an object; entries are arrays), added, marked and then deleted.
  `CREATE TRIGGER IF NOT EXISTS usage_summary_sums_marked AFTER INSERT ON usage_journal
  WHEN substr(NEW.entry, 1, 1) = '{'
  BEGIN
  INSERT INTO usage_summary_totals (user_id, period_key, calls, tokens, cost_micros)
  SELECT t.value ->> 0, t.value ->> 1, t.value ->> 2, t.value ->> 3, t.value ->> 4
  FROM json_each(NEW.entry, '$.t') AS t WHERE true
  ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, tokens = tokens + excluded.tokens,
    cost_micros = cost_micros + excluded.cost_micros;
  INSERT INTO usage_summary_counters (user_id, period_key, scope, metric, period_end, used)
  SELECT c.value ->> 0, c.value ->> 1, c.value ->> 2, c.value ->> 3, c.value ->> 4, c.value ->> 5
  FROM json_each(NEW.entry, '$.c') AS c WHERE true
  ON CONFLICT DO UPDATE SET used = used + excluded.used;
  UPDATE usage_summary_mark SET seq = NEW.seq;
  DELETE FROM usage_journal WHERE seq = NEW.seq;
  END`,
  // Until 2026-12-06 (entry format 2) it read deltas as objects only: replaced by the trigger below.
  'DROP TRIGGER IF EXISTS usage_summary_fill_intent',
  `CREATE TRIGGER IF NOT EXISTS usage_summary_fill_intents AFTER INSERT ON usage_summary_intents
  BEGIN ${upsertsOf('NEW.entry')}
  END`,
];

/** A journal entry as the summary sums it: its user, and its ledger row and counter deltas if it has any. */
export interface SummedEntry {
  userId: string;
  write: { event?: UsageEventRecord; deltas?: CounterDelta[] };
}

/**
 * The summary rows of journal entries, summed as they commit until they go to the summary (about once a
 * second): per user and month, calls, tokens and cost; per user and counter, the amount. Their size follows
 * the users and counters, not the entries: a second of one busy user's entries is one user's sums. Entries
 * without a ledger row (request rows) are counted and add nothing. Users are keyed by the JSON text of their
 * id, as `buildSummary` keys them.
 */
export class SummarySums {
  /** user → period → [period, calls, tokens, cost] */
  private readonly totals = new Map<string, Map<string, [string, number, number, number]>>();
  /** user → counter key → its summed delta */
  private readonly counters = new Map<string, Map<string, CounterDelta>>();
  /** The entries summed. */
  count = 0;

  add({ userId, write }: SummedEntry): void {
    this.count++;
    const e = write.event;
    if (!e) return;
    this.addTotals(userId, e.periodKey, 1, e.inputTokens + e.outputTokens, e.costMicros);
    addDeltas(this.countersOf(userId), write.deltas);
  }

  /** Adds `other`'s sums to these (`other` stays as it is). */
  merge(other: SummarySums): void {
    this.count += other.count;
    for (const [userId, byPeriod] of other.totals)
      for (const [period, calls, tokens, cost] of byPeriod.values())
        this.addTotals(userId, period, calls, tokens, cost);
    for (const [userId, byCounter] of other.counters)
      addDeltas(this.countersOf(userId), [...byCounter.values()]);
  }

  /**
   * The sums with `more` entries added (these sums stay as they are), as the JSON text of the row that goes
   * last in a statement: the trigger `usage_summary_sums_marked` adds them, marks its sequence number and
   * deletes it. Empty sums still mark.
   */
  json(more: readonly SummedEntry[] = []): string {
    if (more.length > 0) {
      const all = new SummarySums();
      all.merge(this);
      for (const e of more) all.add(e);
      return all.json();
    }
    const t: unknown[] = [];
    const c: unknown[] = [];
    for (const [userId, byPeriod] of this.totals) {
      const user = JSON.stringify(userId);
      for (const r of byPeriod.values()) t.push([user, ...r]);
      for (const d of this.counters.get(userId)?.values() ?? [])
        c.push([user, d.periodKey, d.scope, d.metric, d.periodEnd, d.amount]);
    }
    return JSON.stringify({ t, c });
  }

  private addTotals(userId: string, period: string, calls: number, tokens: number, cost: number): void {
    let byPeriod = this.totals.get(userId);
    if (!byPeriod) this.totals.set(userId, (byPeriod = new Map()));
    const t = byPeriod.get(period);
    if (t) {
      t[1] += calls;
      t[2] += tokens;
      t[3] += cost;
    } else {
      byPeriod.set(period, [period, calls, tokens, cost]);
    }
  }

  private countersOf(userId: string): Map<string, CounterDelta> {
    let byCounter = this.counters.get(userId);
    if (!byCounter) this.counters.set(userId, (byCounter = new Map()));
    return byCounter;
  }
}

/**
 * Creates the summary (in the journal's database) and sums the entries a crash left above its mark
 * (`summarizeJournal`). Resolves whether it has been built (see `buildSummary`) and its mark.
 */
export async function prepareSummary(c: SqliteConnection): Promise<{ built: boolean; mark: number }> {
  for (const stmt of SCHEMA) await c.run(stmt, []);
  const rows = await c.all<{ n: number }>('SELECT COUNT(*) AS n FROM usage_summary_state');
  return { built: rows[0].n > 0, mark: await summarizeJournal(c) };
}

/** A journal entry of this format (`entryJson`) or format 2 that is a ledger row: `j.entry` in SQL. */
const LEDGER_ENTRY = `substr(j.entry, 1, 1) = '[' AND j.entry ->> 1 IN (2, 3) AND j.entry ->> 2`;

/**
 * Adds the journal entries above the mark (committed, their sums not yet) to the summary and moves the mark
 * to the journal's last entry, in one transaction; resolves with the mark. Start-up only: nothing else may
 * write to the journal meanwhile.
 */
export async function summarizeJournal(c: SqliteConnection): Promise<number> {
  const row = (name: string) => `j.entry ->> '$[3][${col(name)}]'`;
  await c.run('BEGIN IMMEDIATE', []);
  try {
    const [{ seq: mark }] = await c.all<{ seq: number }>('SELECT seq FROM usage_summary_mark', []);
    await c.run(
      `INSERT INTO usage_summary_totals (user_id, period_key, calls, tokens, cost_micros)
       SELECT j.entry -> 0, ${row('period_key')}, COUNT(*), sum(${row('input_tokens')} + ${row('output_tokens')}),
         sum(${row('cost_micros')})
       FROM usage_journal AS j WHERE j.seq > ? AND ${LEDGER_ENTRY} GROUP BY 1, 2
       ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, tokens = tokens + excluded.tokens,
         cost_micros = cost_micros + excluded.cost_micros`,
      [mark],
    );
    await c.run(
      `INSERT INTO usage_summary_counters (user_id, period_key, scope, metric, period_end, used)
       SELECT j.entry -> 0, ${delta('periodKey')}, ${delta('scope')}, ${delta('metric')},
         max(${delta('periodEnd')}), sum(${delta('amount')})
       FROM usage_journal AS j, json_each(j.entry, '$[4]') AS d
       WHERE j.seq > ? AND ${LEDGER_ENTRY} AND ${IS_DELTA} GROUP BY 1, 2, 3, 4
       ON CONFLICT DO UPDATE SET used = used + excluded.used`,
      [mark],
    );
    await c.run(
      'UPDATE usage_summary_mark SET seq = max(seq, COALESCE((SELECT max(seq) FROM usage_journal), 0))',
      [],
    );
    const [{ seq }] = await c.all<{ seq: number }>('SELECT seq FROM usage_summary_mark', []);
    await c.run('COMMIT', []);
    return seq;
  } catch (e) {
    await c.run('ROLLBACK', []).catch(() => undefined);
    throw e;
  }
}

/**
 * Adds requests a crash interrupted, charged to their users' files at their estimate, once each: an id
 * already added is skipped whole. `entries`: the journal entry text of each.
 */
export async function summarizeIntents(
  c: SqliteConnection,
  entries: { requestId: string; entry: string }[],
): Promise<void> {
  if (entries.length === 0) return;
  await c.run(
    `INSERT OR IGNORE INTO usage_summary_intents (request_id, entry)
     SELECT value ->> 0, value ->> 1 FROM json_each(?)`,
    [JSON.stringify(entries.map((e) => [e.requestId, e.entry]))],
  );
}

/** A summary counter row as read (the user id is JSON text). */
export interface SummaryCounterRow {
  user_id: string;
  period_key: string;
  scope: string;
  metric: string;
  period_end: number;
  used: number;
}

export function summaryCounters(c: SqliteConnection, now: number): Promise<SummaryCounterRow[]> {
  return c.all<SummaryCounterRow>(
    `SELECT user_id, period_key, scope, metric, period_end, used FROM usage_summary_counters
     WHERE period_end > ?`,
    [now],
  );
}

const ORDER = { calls: 'calls', tokens: 'tokens', cost: 'cost_micros' } as const;

export async function summaryTop(
  c: SqliteConnection,
  by: keyof typeof ORDER,
  periodKeys: readonly string[],
  limit: number,
): Promise<SpendingTotal[]> {
  const rows = await c.all<{
    user_id: string;
    calls: number;
    tokens: number;
    cost_micros: number;
    period_key: string;
  }>(
    `SELECT user_id, sum(calls) AS calls, sum(tokens) AS tokens, sum(cost_micros) AS cost_micros,
       max(period_key) AS period_key
     FROM usage_summary_totals WHERE period_key IN (SELECT value FROM json_each(?))
     GROUP BY user_id ORDER BY ${ORDER[by]} DESC, user_id ->> '$' LIMIT ?`,
    [JSON.stringify(periodKeys), limit],
  );
  return rows.map((r) => ({
    userId: JSON.parse(r.user_id) as string,
    calls: Number(r.calls),
    tokens: Number(r.tokens),
    costMicros: Number(r.cost_micros),
    periodKey: r.period_key,
  }));
}

/** Drops counters of periods that ended before `now`, and totals of billing months that started over 400 days before. */
export async function pruneSummary(c: SqliteConnection, now: number): Promise<void> {
  await c.run('DELETE FROM usage_summary_counters WHERE period_end <= ?', [now]);
  await c.run('DELETE FROM usage_summary_totals WHERE period_key < ?', [monthKeyFloor(now)]);
}

/** The month key of 400 days before `now`: totals of months that started earlier are dropped. */
function monthKeyFloor(now: number): string {
  return `month:${new Date(now - 400 * 86_400_000).toISOString().slice(0, 10)}`;
}

/** A user's database file name (`userFileName`): the data directory's other files start with a dot. */
const USER_FILE = /^(?:[a-z0-9-]+--)?[0-9a-f]{64}\.sqlite$/;

/**
 * Summarises a data directory from its users' files (an earlier version's, which had no summary), in one
 * transaction that also marks the summary built. Every user's rows must be in their file (the journal
 * drained and applied). Resolves with how many files were read.
 */
export async function buildSummary(
  c: SqliteConnection,
  dataDir: string,
  options: { driver: SqliteDriver; busyTimeoutMs: number; now: number },
): Promise<number> {
  const files = (await readdir(dataDir)).filter((f) => USER_FILE.test(f));
  const counters: unknown[][] = [];
  const totals: unknown[][] = [];
  for (const f of files) {
    const file = await openConnection(options.driver, join(dataDir, f), {
      mustExist: true,
      busyTimeoutMs: options.busyTimeoutMs,
      pragmas: '',
    });
    try {
      for (const r of await file.all<SummaryCounterRow>(
        `SELECT user_id, period_key, scope, metric, period_end, used FROM usage_counters
         WHERE period_end > ? AND used <> 0`,
        [options.now],
      ))
        counters.push([JSON.stringify(r.user_id), r.period_key, r.scope, r.metric, r.period_end, r.used]);
      for (const r of await file.all<{
        user_id: string;
        period_key: string;
        calls: number;
        tokens: number;
        cost_micros: number;
      }>(
        `SELECT user_id, period_key, COUNT(*) AS calls, sum(input_tokens + output_tokens) AS tokens,
           sum(cost_micros) AS cost_micros
         FROM usage_events WHERE period_key >= ? GROUP BY user_id, period_key`,
        [monthKeyFloor(options.now)],
      ))
        totals.push([JSON.stringify(r.user_id), r.period_key, r.calls, r.tokens, r.cost_micros]);
    } finally {
      await file.close();
    }
  }
  await c.run('BEGIN IMMEDIATE', []);
  try {
    await c.run('DELETE FROM usage_summary_counters', []);
    await c.run('DELETE FROM usage_summary_totals', []);
    await c.run(
      `INSERT INTO usage_summary_counters (user_id, period_key, scope, metric, period_end, used)
       SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 FROM json_each(?)`,
      [JSON.stringify(counters)],
    );
    await c.run(
      `INSERT INTO usage_summary_totals (user_id, period_key, calls, tokens, cost_micros)
       SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?)`,
      [JSON.stringify(totals)],
    );
    await c.run('INSERT INTO usage_summary_state (id, built_at) VALUES (1, ?)', [options.now]);
    // The journal's entries are all in the users' files (drained and applied): summarised with them.
    await c.run(
      `UPDATE usage_summary_mark SET seq = COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'usage_journal'), 0)`,
      [],
    );
    await c.run('COMMIT', []);
  } catch (e) {
    await c.run('ROLLBACK', []).catch(() => undefined);
    throw e;
  }
  return files.length;
}
