import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { UsageEventRecord } from '../usage-store.interface';
import { EVENT_COLUMNS, type CounterDelta } from './sqlite-batch-writer';
import { openConnection } from './sqlite-connection';
import {
  prepareSummary,
  summarizeIntents,
  summarizeJournal,
  SummarySums,
  type SummedEntry,
} from './spending-summary';
import { entryJson, JOURNAL_FILE } from './usage-journal';

interface Parsed {
  t: [string, string, number, number, number][];
  c: [string, string, string, string, number, number][];
}

const entryArb: fc.Arbitrary<SummedEntry> = fc
  .record({
    userId: fc.constantFrom('alice', 'bob', 'ü "quoted"\n'),
    period: fc.constantFrom('month:2026-11-01', 'month:2026-12-01'),
    withEvent: fc.boolean(),
    inputTokens: fc.nat(100_000),
    outputTokens: fc.nat(100_000),
    costMicros: fc.nat(5_000_000),
    deltas: fc.array(
      fc.record({
        scope: fc.constantFrom('ai_text', '*'),
        metric: fc.constantFrom('calls', 'cost'),
        amount: fc.nat(1e6),
      }),
      { maxLength: 3 },
    ),
  })
  .map(({ userId, period, withEvent, inputTokens, outputTokens, costMicros, deltas }) => ({
    userId,
    write: withEvent
      ? {
          event: { periodKey: period, inputTokens, outputTokens, costMicros } as UsageEventRecord,
          deltas: deltas.map((d): CounterDelta => ({
            ...d,
            periodKey: period,
            periodEnd: 1_767_225_600_000,
          })),
        }
      : {},
  }));

/** The summary rows of `entries` as a plain fold, keyed and sorted to compare with `SummarySums.json`. */
function expected(entries: readonly SummedEntry[]): { t: string[]; c: string[] } {
  const t = new Map<string, number[]>();
  const c = new Map<string, number>();
  for (const { userId, write } of entries) {
    const e = write.event;
    if (!e) continue;
    const u = JSON.stringify(userId);
    const k = JSON.stringify([u, e.periodKey]);
    const prev = t.get(k) ?? [0, 0, 0];
    t.set(k, [prev[0] + 1, prev[1] + e.inputTokens + e.outputTokens, prev[2] + e.costMicros]);
    for (const d of write.deltas ?? []) {
      const ck = JSON.stringify([u, d.periodKey, d.scope, d.metric, d.periodEnd]);
      c.set(ck, (c.get(ck) ?? 0) + d.amount);
    }
  }
  return {
    t: [...t].map(([k, v]) => JSON.stringify([...(JSON.parse(k) as string[]), ...v])).sort(),
    c: [...c].map(([k, v]) => JSON.stringify([...(JSON.parse(k) as unknown[]), v])).sort(),
  };
}

const rowsOf = (json: string) => {
  const p = JSON.parse(json) as Parsed;
  return { t: p.t.map((r) => JSON.stringify(r)).sort(), c: p.c.map((r) => JSON.stringify(r)).sort() };
};

describe('SummarySums', () => {
  it('sums any entries split across add, merge and json(more) exactly as one fold, leaving its own sums as they were', () => {
    fc.assert(
      fc.property(fc.array(entryArb, { maxLength: 60 }), fc.nat(60), fc.nat(60), (entries, a, b) => {
        const [i, j] = [Math.min(a, b, entries.length), Math.min(Math.max(a, b), entries.length)];
        const first = new SummarySums();
        const second = new SummarySums();
        entries.slice(0, i).forEach((e) => first.add(e));
        entries.slice(i, j).forEach((e) => second.add(e));
        const secondBefore = second.json();
        first.merge(second);
        const before = first.json();
        const all = first.json(entries.slice(j));
        expect(rowsOf(all)).toEqual(expected(entries));
        expect(first.json()).toBe(before); // json(more) added `more` to a copy
        expect(second.json()).toBe(secondBefore); // merge read `second`, did not change it
        expect(first.count).toBe(j);
      }),
      { numRuns: 300 },
    );
  });

  it('holds one row per user and month and one per counter, however many entries it has summed', () => {
    const sums = new SummarySums();
    for (let i = 0; i < 10_000; i++)
      sums.add({
        userId: 'alice',
        write: {
          event: {
            periodKey: 'month:2026-12-01',
            inputTokens: 7,
            outputTokens: 32,
            costMicros: 21,
          } as UsageEventRecord,
          deltas: [
            {
              periodKey: 'month:2026-12-01',
              scope: 'ai_text',
              metric: 'calls',
              periodEnd: 1_767_225_600_000,
              amount: 1,
            },
            {
              periodKey: 'month:2026-12-01',
              scope: '*',
              metric: 'cost',
              periodEnd: 1_767_225_600_000,
              amount: 21,
            },
          ],
        },
      });
    sums.add({ userId: 'bob', write: {} }); // a request row: counted, no sums
    expect(sums.count).toBe(10_001);
    expect(JSON.parse(sums.json())).toEqual({
      t: [['"alice"', 'month:2026-12-01', 10_000, 390_000, 210_000]],
      c: [
        ['"alice"', 'month:2026-12-01', 'ai_text', 'calls', 1_767_225_600_000, 10_000],
        ['"alice"', 'month:2026-12-01', '*', 'cost', 1_767_225_600_000, 210_000],
      ],
    });
  });

  it('with nothing summed is an empty row, which still marks', () => {
    expect(new SummarySums().json()).toBe('{"t":[],"c":[]}');
  });
});

describe('the summary of entries a crash left', () => {
  const END = 1_767_225_600_000;
  const PERIOD = 'month:2026-12-01';
  /** A ledger row's values: `tokens` input tokens, 10 µ$, in December. */
  const rowOf = (tokens: number) =>
    JSON.stringify(
      EVENT_COLUMNS.map((c) =>
        c === 'period_key'
          ? PERIOD
          : c === 'input_tokens'
            ? tokens
            : c === 'output_tokens'
              ? 0
              : c === 'cost_micros'
                ? 10
                : null,
      ),
    );
  const deltas = (tokens: number): CounterDelta[] =>
    (['calls', 'tokens'] as const).map((metric) => ({
      periodKey: PERIOD,
      scope: 'ai_text',
      metric,
      periodEnd: END,
      amount: metric === 'calls' ? 1 : tokens,
    }));
  /** This version's entry, as the journal and the intent log write it. */
  const current = (tokens: number) =>
    entryJson('u', { kind: 'event', row: rowOf(tokens), deltas: deltas(tokens) });
  /** Format 2's (until 2026-12-06): the same, each delta an object. */
  const format2 = (tokens: number) => `["u",2,true,${rowOf(tokens)},${JSON.stringify(deltas(tokens))},null]`;

  it("adds interrupted requests' and journal entries' rows and deltas, in this format and in format 2 alike", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'usage-summary-spec-'));
    const c = await openConnection('sqlite3', join(dir, JOURNAL_FILE), {
      mustExist: false,
      busyTimeoutMs: 1_000,
      pragmas: 'PRAGMA journal_mode = WAL',
    });
    const summary = () =>
      Promise.all([
        c.all('SELECT user_id, period_key, calls, tokens, cost_micros FROM usage_summary_totals'),
        c.all('SELECT user_id, scope, metric, period_end, used FROM usage_summary_counters ORDER BY metric'),
      ]);
    try {
      await c.exec('CREATE TABLE usage_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL)');
      expect(await prepareSummary(c)).toEqual({ built: false, mark: 0 });
      await summarizeIntents(c, [
        { requestId: 'i1', entry: format2(5) },
        { requestId: 'i2', entry: current(7) },
        { requestId: 'i2', entry: current(7) }, // once per request
      ]);
      expect(await summary()).toEqual([
        [{ user_id: '"u"', period_key: PERIOD, calls: 2, tokens: 12, cost_micros: 20 }],
        [
          { user_id: '"u"', scope: 'ai_text', metric: 'calls', period_end: END, used: 2 },
          { user_id: '"u"', scope: 'ai_text', metric: 'tokens', period_end: END, used: 12 },
        ],
      ]);
      await c.run('INSERT INTO usage_journal (entry) VALUES (?), (?)', [format2(11), current(13)]);
      expect(await summarizeJournal(c)).toBe(2);
      expect(await summary()).toEqual([
        [{ user_id: '"u"', period_key: PERIOD, calls: 4, tokens: 36, cost_micros: 40 }],
        [
          { user_id: '"u"', scope: 'ai_text', metric: 'calls', period_end: END, used: 4 },
          { user_id: '"u"', scope: 'ai_text', metric: 'tokens', period_end: END, used: 36 },
        ],
      ]);
    } finally {
      await c.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
