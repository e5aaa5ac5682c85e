import fc from 'fast-check';
import type { LimitCharge } from '../usage-store.interface';
import { LeaseBook, MAX_LEASE_SCALE, type LeaseDatabase } from './lease-book';

const charge = (amount: number, max = 1_000_000, metric: 'calls' | 'tokens' = 'calls'): LimitCharge => ({
  limitId: `openai:${metric}:month`,
  scope: 'openai',
  metric,
  period: 'month',
  periodKey: 'month:2026-11-01',
  periodStart: 0,
  periodEnd: 1,
  max,
  amount,
});

/**
 * The database side as the book sees it: grants every ask in full (or refuses all while `refuse`), and
 * records what was granted and given back. PostgreSQL's side of it is tested in
 * `test/shared-leases.e2e-spec.ts`; this checks the book's own bookkeeping under random interleavings.
 */
class Ledger implements LeaseDatabase {
  granted = new Map<string, number>();
  metricOf = new Map<string, string>();
  returned: string[] = [];
  refuse = false;
  asks = 0;
  take(items: { id: string; m: string; want: number }[]): Promise<Map<string, number>> {
    this.asks += items.length;
    for (const i of items) {
      this.granted.set(i.id, this.refuse ? 0 : i.want);
      this.metricOf.set(i.id, i.m);
    }
    return Promise.resolve(new Map(items.map((i) => [i.id, this.refuse ? 0 : i.want])));
  }
  give(ids: string[]): Promise<void> {
    this.returned.push(...ids);
    return Promise.resolve();
  }

  /** What the database holds in `reserved` for this instance's blocks, per metric. */
  reserved(metric: string): number {
    let sum = 0;
    for (const [id, amount] of this.granted)
      if (this.metricOf.get(id) === metric && !this.returned.includes(id)) sum += amount;
    return sum;
  }
}

const OPTIONS = { requests: 4, holdMs: 1_000, headroom: 8 };

async function admitOrTake(book: LeaseBook, id: string, charges: LimitCharge[], now: number) {
  if (book.admit('u', id, charges, now)) return true;
  return (await book.take('u', charges, now)) && book.admit('u', id, charges, now);
}

describe('LeaseBook', () => {
  it('admits from one granted block up to its size, then asks for the next', async () => {
    const db = new Ledger();
    const book = new LeaseBook(OPTIONS, db, 60_000);
    const results: boolean[] = [];
    for (let i = 0; i < 6; i++) results.push(await admitOrTake(book, `r${i}`, [charge(1)], 0));
    expect(results).toEqual([true, true, true, true, true, true]);
    // Blocks of 4 calls: requests 0–3, then 4–5 from the next, twice the size (the first was spent at once).
    expect(db.asks).toBe(2);
    expect([...db.granted.values()]).toEqual([4, 8]);
    // The first block is spent but its requests have not settled: it is not given back yet.
    await new Promise(setImmediate);
    expect(db.returned).toEqual([]);
    for (let i = 0; i < 4; i++) book.done(`r${i}`);
    await new Promise(setImmediate);
    expect(db.returned).toEqual([[...db.granted.keys()][0]]);
  });

  it('a counter spending its leases fast gets larger ones, up to MAX_LEASE_SCALE blocks; slower, the same size; after a pause, one block', async () => {
    const db = new Ledger();
    const book = new LeaseBook(OPTIONS, db, 60_000);
    const sizes = () => [...db.granted.values()];
    let n = 0;
    // Spend each lease whole at `now`, then ask for the next.
    const spend = async (now: number) => {
      const before = sizes().length;
      while (sizes().length === before)
        expect(await admitOrTake(book, `r${n++}`, [charge(1)], now)).toBe(true);
      return sizes()[sizes().length - 1];
    };
    // Spent within a quarter of holdMs (250 ms): 4, 8, 16, 32, 64 (16 × 4), then 64 again.
    await spend(0);
    const fast: number[] = [];
    for (let i = 1; i <= 6; i++) fast.push(await spend(i * 10));
    expect(fast).toEqual([8, 16, 32, 64, 64, 64]);
    expect(MAX_LEASE_SCALE).toBe(16);
    // The last lease (asked at 60) spent at 400, more slowly: the next is as large, not larger.
    expect(await spend(400)).toBe(64);
    // That one (asked at 400) is not spent before its holdMs is up: a tick retires it; the next is one block.
    for (let i = 0; i < 10; i++) expect(book.admit('u', `s${i}`, [charge(1)], 500)).toBe(true);
    book.tick(1_400);
    expect(await admitOrTake(book, 'after-pause', [charge(1)], 1_400)).toBe(true);
    expect(sizes()[sizes().length - 1]).toBe(4);
    // A request of 5 calls: blocks are in requests' worth at its size (4 × 5), grown from the last one.
    const size = sizes().length;
    for (let i = 0; i < 3; i++) expect(await admitOrTake(book, `rest${i}`, [charge(1)], 1_401)).toBe(true);
    expect(await admitOrTake(book, 'five', [charge(5)], 1_402)).toBe(true);
    expect(sizes().slice(size)).toEqual([2 * 4 * 5]);
  });

  it('a larger lease refused: the next ask, at once, is for one block', async () => {
    const db = new Ledger();
    const book = new LeaseBook(OPTIONS, db, 60_000);
    for (let i = 0; i < 4; i++) expect(await admitOrTake(book, `r${i}`, [charge(1)], 0)).toBe(true);
    db.refuse = true; // the counter nears its limit: the database grants no block now
    expect(await admitOrTake(book, 'grown', [charge(1)], 1)).toBe(false); // asked 8, refused
    db.refuse = false;
    expect(await admitOrTake(book, 'base', [charge(1)], 2)).toBe(true); // asked 4 at once, granted
    expect([...db.granted.values()]).toEqual([4, 0, 4]);
    expect(db.asks).toBe(3);
  });

  it('after a refused ask, asks again for that counter only after holdMs', async () => {
    const db = new Ledger();
    db.refuse = true;
    const book = new LeaseBook(OPTIONS, db, 60_000);
    expect(await admitOrTake(book, 'a', [charge(1)], 0)).toBe(false);
    expect(await admitOrTake(book, 'b', [charge(1)], 999)).toBe(false);
    expect(db.asks).toBe(1);
    db.refuse = false;
    book.tick(1_000);
    expect(await admitOrTake(book, 'c', [charge(1)], 1_000)).toBe(true);
    expect(db.asks).toBe(2);
  });

  it('never admits from a block granted under another limit (a changed plan), and gives the old block back once its requests settled', async () => {
    const db = new Ledger();
    const book = new LeaseBook(OPTIONS, db, 60_000);
    expect(await admitOrTake(book, 'a', [charge(1, 1_000)], 0)).toBe(true);
    expect(book.admit('u', 'b', [charge(1, 500)], 0)).toBe(false);
    // A block under the new limit; the old one admits no more and goes back once its request settled.
    expect(await admitOrTake(book, 'b', [charge(1, 500)], 0)).toBe(true);
    const [oldBlock, newBlock] = [...db.granted.keys()];
    expect(book.admit('u', 'c', [charge(1, 1_000)], 0)).toBe(false);
    book.done('a');
    await new Promise(setImmediate);
    expect(db.returned).toEqual([oldBlock]);
    expect(book.admit('u', 'd', [charge(1, 500)], 0)).toBe(true); // from the new block
    expect(db.granted.has(newBlock)).toBe(true);
  });

  it('random interleavings: requests not yet settled are always covered by blocks not yet given back; each block goes back once', async () => {
    const step = fc.oneof(
      fc.record({
        kind: fc.constant('request' as const),
        amount: fc.integer({ min: 0, max: 3 }),
        tokens: fc.integer({ min: 0, max: 50 }),
      }),
      fc.record({ kind: fc.constant('settle' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('refund' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('tick' as const), advance: fc.integer({ min: 0, max: 700 }) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 120 }), async (steps) => {
        const db = new Ledger();
        const book = new LeaseBook(OPTIONS, db, 60_000);
        // Admitted from blocks and not yet settled: their usage is not in `used` yet, so the blocks still
        // reserved in the database must cover them, or another instance could admit into that room.
        const open: { id: string; charges: LimitCharge[] }[] = [];
        let now = 0;
        let n = 0;
        const inFlight = (metric: string) =>
          open.reduce(
            (sum, r) => sum + r.charges.filter((c) => c.metric === metric).reduce((a, c) => a + c.amount, 0),
            0,
          );
        for (const s of steps) {
          if (s.kind === 'request') {
            const charges = [charge(s.amount), charge(s.tokens, 1_000_000, 'tokens')];
            const id = `r${n++}`;
            if (await admitOrTake(book, id, charges, now)) open.push({ id, charges });
          } else if (s.kind === 'settle' && open.length) {
            const [r] = open.splice(s.pick % open.length, 1);
            book.done(r.id);
          } else if (s.kind === 'refund' && open.length) {
            const [r] = open.splice(s.pick % open.length, 1);
            book.done(r.id, r.charges);
          } else if (s.kind === 'tick') {
            now += s.advance;
            book.tick(now);
          }
          await new Promise(setImmediate);
          for (const metric of ['calls', 'tokens'])
            expect(inFlight(metric)).toBeLessThanOrEqual(db.reserved(metric));
          expect(new Set(db.returned).size).toBe(db.returned.length); // each block back once
        }
        // Once every request settled and time moved past holdMs, every block went back, once.
        for (const r of open.splice(0)) book.done(r.id);
        book.tick(now + OPTIONS.holdMs);
        await book.close();
        const grantedIds = [...db.granted].filter(([, amount]) => amount > 0).map(([id]) => id);
        expect([...db.returned].sort()).toEqual(grantedIds.sort());
        expect(book.size).toBe(0);
      }),
      { numRuns: 200, seed: 20261130 },
    );
  });
});
