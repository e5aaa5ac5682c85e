import fc from 'fast-check';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHECKPOINT_INTERVAL_MS, entryJson, JOURNAL_FILE, UsageJournal } from './usage-journal';
import type { SqliteDriver } from './sqlite-connection';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Appends `n` bare request rows and resolves once the journal holds them. */
async function appendRows(journal: UsageJournal, from: number, n: number): Promise<void> {
  for (let i = from; i < from + n; i++) {
    journal.append(
      `user-${i % 7}`,
      {
        request: {
          requestId: `req-${String(i).padStart(8, '0')}`,
          userId: `user-${i % 7}`,
          provider: 'openai',
          path: '/openai/v1/chat/completions',
          method: 'POST',
          statusCode: 200,
          durationMs: 3,
          occurredAt: 1_764_000_000_000 + i,
        },
      },
      () => undefined,
      () => undefined,
    );
  }
  expect(await journal.caughtUp()).toBe(true);
}

describe.each<SqliteDriver>(['sqlite3', 'better-sqlite3'])('UsageJournal checkpoints (%s)', (driver) => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'usage-journal-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('copies the log into the database in the background, so the log stops growing with commits', async () => {
    const journal = await UsageJournal.open(dir, { busyTimeoutMs: 1_000, synchronous: 'normal', driver });
    const db = join(dir, JOURNAL_FILE);
    const wal = `${db}-wal`;
    const emptyDb = statSync(db).size;
    const walSizes: number[] = [];
    try {
      // 16 turns of 300 rows (≈ 25 pages each); SQLite's own checkpoint is off (it would wait for 1,000).
      for (let turn = 0; turn < 16; turn++) {
        await appendRows(journal, turn * 300, 300);
        await sleep(CHECKPOINT_INTERVAL_MS * 2.5);
        walSizes.push(statSync(wal).size);
      }
      // The rows reached the database file while the journal was open: checkpoints ran.
      expect(statSync(db).size).toBeGreaterThan(emptyDb + 16 * 300 * 100);
      // The log is reused after each checkpoint: it stays at about one turn's pages, instead of 16 turns'.
      expect(Math.max(...walSizes.slice(8))).toBeLessThanOrEqual(walSizes[1] * 1.5);
    } finally {
      await journal.close();
    }
    // Closed: everything is in the database file, and the rows read back.
    expect(existsSync(wal) ? statSync(wal).size : 0).toBe(0);
    const again = await UsageJournal.open(dir, { busyTimeoutMs: 1_000, synchronous: 'normal', driver });
    try {
      expect(again.leftoverUsers().sort()).toEqual([
        'user-0',
        'user-1',
        'user-2',
        'user-3',
        'user-4',
        'user-5',
        'user-6',
      ]);
      const rows = again.leftoverUsers().reduce((n, u) => n + again.takeLeftovers(u).length, 0);
      expect(rows).toBe(16 * 300);
    } finally {
      await again.close();
    }
  }, 30_000);
});

describe('entryJson', () => {
  it("carries each write's deltas as arrays, as JSON.stringify writes them, whatever their text and however often the counter recurs", () => {
    const delta = fc.record({
      periodKey: fc.constantFrom('2026-12', '2026-12-05', 'p"\\\u0001é'),
      scope: fc.string({ maxLength: 12 }),
      metric: fc.constantFrom('calls', 'tokens', 'cost'),
      periodEnd: fc.constantFrom(1_767_225_600_000, 1_767_312_000_000),
      amount: fc.nat(),
    });
    fc.assert(
      fc.property(fc.string({ maxLength: 20 }), fc.array(delta, { maxLength: 4 }), (userId, deltas) => {
        const write = { kind: 'request' as const, row: '["r",null]', deltas };
        const compact = deltas.map((d) => [d.periodKey, d.scope, d.metric, d.periodEnd, d.amount]);
        const expected = `[${JSON.stringify(userId)},3,false,["r",null],${
          deltas.length ? JSON.stringify(compact) : 'null'
        },null]`;
        expect(entryJson(userId, write)).toBe(expected);
      }),
      { numRuns: 500 },
    );
  });
});
