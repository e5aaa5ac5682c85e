import fc from 'fast-check';
import type { UsageEventRecord } from '../usage-store.interface';
import type { CounterDelta } from './sqlite-batch-writer';
import { SummarySums, type SummedEntry } from './spending-summary';

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
