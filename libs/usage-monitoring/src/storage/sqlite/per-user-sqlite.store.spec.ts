import { closeSync, mkdtempSync, openSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Database, OPEN_READONLY } from 'sqlite3';
import type { LimitCharge, Reservation, Settlement } from '../usage-store.interface';
import { PerUserSqliteStore } from './per-user-sqlite.store';
import { DELTA_FIELDS } from './sqlite-batch-writer';
import { entryJson, JOURNAL_FILE, UsageJournal } from './usage-journal';
import { isIntentLogFile } from './intent-log';
import { userFileName } from './user-file-name';

const NOW = Date.UTC(2026, 10, 20);
const END = Date.UTC(2026, 11, 1);

function charge(metric: LimitCharge['metric'], max: number, amount: number): LimitCharge {
  return {
    limitId: `*:${metric}:month`,
    scope: '*',
    metric,
    period: 'month',
    periodKey: 'month:2026-11-01',
    periodStart: Date.UTC(2026, 10, 1),
    periodEnd: END,
    max,
    amount,
  };
}

function settlement(r: Reservation, tokens: number): Settlement {
  return {
    actual: { calls: 1, tokens, costMicros: 10 },
    event: {
      requestId: r.requestId,
      userId: r.userId,
      provider: 'openai',
      model: 'gpt-4o-mini',
      endpoint: '/x',
      method: 'POST',
      statusCode: 200,
      inputTokens: tokens,
      outputTokens: 0,
      cachedInputTokens: 0,
      cacheWriteTokens: 0,
      reasoningTokens: 0,
      costMicros: 10,
      priceVersion: null,
      responseTimeMs: 1,
      requestBytes: 0,
      responseBytes: 0,
      userAgent: null,
      ip: null,
      searches: 0,
      images: 0,
      pages: 0,
      estimated: false,
      outcome: 'ok',
      shadowRefused: null,
      periodKey: 'month:2026-11-01',
      occurredAt: NOW,
    },
  };
}

function query(file: string, sql: string): Promise<Record<string, unknown>[]> {
  return new Promise((resolve, reject) => {
    const db = new Database(file, OPEN_READONLY, (e) => {
      if (e) return reject(e);
      db.all(sql, (err, rows) => {
        db.close();
        if (err) reject(err);
        else resolve(rows as Record<string, unknown>[]);
      });
    });
  });
}

/** A store's options on `dir` at `NOW`; by default its users are kept only while their files are open. */
function storeOptions(
  dir: string,
  maxOpenDataSources: number,
  applyDelayMs: number,
  { sumsIntervalMs, maxUsersInMemory = 0 }: { sumsIntervalMs?: number; maxUsersInMemory?: number } = {},
) {
  return {
    sumsIntervalMs,
    dataDir: dir,
    maxOpenDataSources,
    busyTimeoutMs: 1000,
    synchronous: 'normal' as const,
    reservationTtlMs: 900_000,
    journal: { applyDelayMs, maxUsersInMemory },
    clock: () => NOW,
  };
}

const storeAt = (...args: Parameters<typeof storeOptions>) => new PerUserSqliteStore(storeOptions(...args));

/** Reserves `charges` for `userId` and settles the request with `tokens` (refused: the test fails). */
async function settleAs(
  store: PerUserSqliteStore,
  userId: string,
  requestId: string,
  charges: LimitCharge[],
  tokens: number,
): Promise<void> {
  const r = await store.reserve({ requestId, userId, provider: 'openai', now: NOW, charges });
  if (!r.admitted) throw new Error('refused');
  await store.settle(r.reservation, settlement(r.reservation, tokens));
}

describe('PerUserSqliteStore', () => {
  let dir: string;
  let store: PerUserSqliteStore;
  const openStore = async () => {
    store = storeAt(dir, 8, 0);
    await store.init();
  };
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'usage-store-spec-'));
    await openStore();
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps the spending summary of what the journal receives: ids of any character, rows without counters, bare request rows', async () => {
    const odd = 'a"b\\c\u0000d <é> 🙂';
    await settleAs(store, odd, 'o1', [charge('calls', 10, 1), charge('tokens', 1_000, 5)], 7);
    await settleAs(store, odd, 'o2', [charge('calls', 10, 1), charge('tokens', 1_000, 5)], 3);
    await settleAs(store, 'no-limits', 'n1', [], 4); // a plan without limits: a ledger row, no counter
    await store.recordRequest({
      requestId: 'bare',
      userId: 'no-limits',
      provider: null,
      path: '/x',
      method: 'GET',
      statusCode: 200,
      durationMs: 1,
      occurredAt: NOW,
    });
    const counters = await store.currentCounters(NOW);
    expect(counters.sort((a, b) => a.metric.localeCompare(b.metric))).toEqual([
      {
        userId: odd,
        scope: '*',
        metric: 'calls',
        periodKey: 'month:2026-11-01',
        periodEnd: END,
        used: 2,
        granted: 0,
      },
      {
        userId: odd,
        scope: '*',
        metric: 'tokens',
        periodKey: 'month:2026-11-01',
        periodEnd: END,
        used: 10,
        granted: 0,
      },
    ]);
    const top = await store.topSpenders({ by: 'tokens', periodKeys: ['month:2026-11-01'], limit: 10 });
    expect(top).toEqual([
      { userId: odd, calls: 2, tokens: 10, costMicros: 20, periodKey: 'month:2026-11-01' },
      { userId: 'no-limits', calls: 1, tokens: 4, costMicros: 10, periodKey: 'month:2026-11-01' },
    ]);
    // Ended periods drop out; a reopened store reads the same summary back (nothing rebuilt).
    expect(await store.currentCounters(END)).toEqual([]);
    await store.close();
    await openStore();
    expect(await store.topSpenders({ by: 'calls', periodKeys: ['month:2026-11-01'], limit: 1 })).toEqual([
      top[0],
    ]);
  });

  it("sums the journal's entries into the summary once: many users settling in one turn, after an earlier version's per-entry trigger", async () => {
    // A journal of an earlier version summed each entry in a trigger of its own: left in place, every
    // settlement below would be counted twice.
    await store.close();
    await new Promise<void>((resolve, reject) => {
      const db = new Database(join(dir, JOURNAL_FILE), (e) => {
        if (e) return reject(e);
        db.exec(
          `CREATE TRIGGER usage_summary_fill AFTER INSERT ON usage_journal BEGIN
             INSERT INTO usage_summary_totals (user_id, period_key, calls, tokens, cost_micros)
             VALUES (NEW.entry -> 0, 'month:2026-11-01', 1, 0, 0)
             ON CONFLICT DO UPDATE SET calls = calls + 1;
           END`,
          (err) => db.close(() => (err ? reject(err) : resolve())),
        );
      });
    });
    await openStore();
    const users = ['u0', 'u1', 'u2'];
    const reservations = await Promise.all(
      Array.from({ length: 60 }, async (_, i) => {
        const r = await store.reserve({
          requestId: `m${i}`,
          userId: users[i % 3],
          provider: 'openai',
          now: NOW,
          charges: [charge('calls', 100, 1), charge('tokens', 10_000, 5)],
        });
        if (!r.admitted) throw new Error('refused');
        return r.reservation;
      }),
    );
    // Settled in one turn: their entries share the journal's statements.
    await Promise.all(reservations.map((r, i) => store.settle(r, settlement(r, i))));
    const tokensOf = (u: number) => Array.from({ length: 20 }, (_, k) => 3 * k + u).reduce((a, b) => a + b);
    expect(
      (await store.topSpenders({ by: 'tokens', periodKeys: ['month:2026-11-01'], limit: 10 })).map((t) => [
        t.userId,
        t.calls,
        t.tokens,
        t.costMicros,
      ]),
    ).toEqual([2, 1, 0].map((u) => [`u${u}`, 20, tokensOf(u), 200]));
    const counters = await store.currentCounters(NOW);
    expect(
      counters.map((c) => [c.userId, c.metric, c.used]).sort((a, b) => String(a).localeCompare(String(b))),
    ).toEqual(
      users.flatMap((u, n) => [
        [u, 'calls', 20],
        [u, 'tokens', tokensOf(n)],
      ]),
    );
    await store.close();
    // The 60 entries, then one row of their sums when the summary was read (61 sequence numbers, the mark at
    // the last); that row is gone, and so is the old trigger.
    const file = join(dir, JOURNAL_FILE);
    expect(await query(file, "SELECT seq FROM sqlite_sequence WHERE name = 'usage_journal'")).toEqual([
      { seq: 61 },
    ]);
    expect(await query(file, 'SELECT seq FROM usage_summary_mark')).toEqual([{ seq: 61 }]);
    expect(await query(file, "SELECT seq FROM usage_journal WHERE entry LIKE '{%'")).toEqual([]);
    expect(await query(file, "SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")).toEqual([
      { name: 'usage_summary_fill_intents' },
      { name: 'usage_summary_sums_marked' },
    ]);
    await openStore();
  });

  it("holds an entry its user's file has in the journal until the summary has its sums; sums a crash left unsummed once, at the next start (of this format and of format 2)", async () => {
    await store.close();
    // Sums only when read or drained, not by time: what is held, and when, is then this test's to decide.
    store = storeAt(dir, 8, 0, { sumsIntervalMs: 3_600_000 });
    await store.init();
    const settle = (requestId: string, tokens: number) =>
      settleAs(store, 'u', requestId, [charge('calls', 100, 1), charge('tokens', 10_000, 5)], tokens);
    for (let i = 0; i < 5; i++) await settle(`h${i}`, i + 1);
    const journal = join(dir, JOURNAL_FILE);
    const userFile = join(dir, userFileName('u'));
    const entries = async () =>
      Number((await query(journal, "SELECT COUNT(*) AS n FROM usage_journal WHERE entry LIKE '[%'"))[0].n);
    // Applied to the user's file (no apply delay), still in the journal: the summary has not had them.
    for (const end = Date.now() + 5_000; Date.now() < end; await new Promise((r) => setTimeout(r, 20)))
      if ((await query(userFile, 'SELECT COUNT(*) AS n FROM usage_events'))[0].n === 5) break;
    expect((await query(userFile, 'SELECT COUNT(*) AS n FROM usage_events'))[0].n).toBe(5);
    await new Promise((r) => setTimeout(r, 300)); // past a checkpoint tick and the journal's next turns
    expect(await entries()).toBe(5);
    expect(await query(journal, 'SELECT seq FROM usage_summary_mark')).toEqual([{ seq: 0 }]);
    // Read: summed (seq 6, after the 5 entries), then forgotten.
    expect(await store.topSpenders({ by: 'calls', periodKeys: ['month:2026-11-01'], limit: 5 })).toEqual([
      { userId: 'u', calls: 5, tokens: 15, costMicros: 50, periodKey: 'month:2026-11-01' },
    ]);
    expect(await query(journal, 'SELECT seq FROM usage_summary_mark')).toEqual([{ seq: 6 }]);
    for (const end = Date.now() + 5_000; Date.now() < end && (await entries()) > 0;)
      await new Promise((r) => setTimeout(r, 20));
    expect(await entries()).toBe(0);
    await store.close();
    // What a crash leaves: entries committed to the journal above the mark, their sums not yet added.
    const deltas = (tokens: number) =>
      [charge('calls', 100, 1), charge('tokens', 10_000, tokens)].map((c) => ({
        periodKey: c.periodKey,
        scope: c.scope,
        metric: c.metric,
        periodEnd: c.periodEnd,
        amount: c.amount,
      }));
    const left = [7, 11].map((tokens, i) => {
      const { event } = settlement({ requestId: `c${i}`, userId: 'u' } as Reservation, tokens);
      const entry = entryJson('u', { event, deltas: deltas(tokens) });
      if (i === 0) return entry;
      // The second as format 2 wrote it (until 2026-12-06, each delta an object): a crash, then an upgrade.
      const e = JSON.parse(entry) as unknown[];
      e[1] = 2;
      e[4] = (e[4] as unknown[][]).map((d) => Object.fromEntries(DELTA_FIELDS.map((k, j) => [k, d[j]])));
      return JSON.stringify(e);
    });
    await new Promise<void>((resolve, reject) => {
      const db = new Database(journal, (e) => {
        if (e) return reject(e);
        db.run(
          'INSERT INTO usage_journal (entry) SELECT value FROM json_each(?)',
          [JSON.stringify(left.map((t) => JSON.parse(t) as unknown))],
          (err) => db.close(() => (err ? reject(err) : resolve())),
        );
      });
    });
    // Summed once at the start, applied to the user's file, and not again at the start after.
    for (let open = 0; open < 2; open++) {
      store = storeAt(dir, 8, 0, { sumsIntervalMs: 3_600_000 });
      await store.init();
      expect(await store.topSpenders({ by: 'calls', periodKeys: ['month:2026-11-01'], limit: 5 })).toEqual([
        { userId: 'u', calls: 7, tokens: 33, costMicros: 70, periodKey: 'month:2026-11-01' },
      ]);
      expect(
        (await store.currentCounters(NOW))
          .map((c) => [c.metric, c.used])
          .sort((a, b) => String(a).localeCompare(String(b))),
      ).toEqual([
        ['calls', 7],
        ['tokens', 15 + 7 + 11],
      ]);
      await store.close();
    }
    expect((await query(userFile, 'SELECT COUNT(*) AS n FROM usage_events'))[0].n).toBe(7);
    expect(await query(journal, 'SELECT seq FROM usage_summary_mark')).toEqual([{ seq: 8 }]);
    await openStore();
  });

  it('reserves all charges or none', async () => {
    const refused = await store.reserve({
      requestId: 'r1',
      userId: 'u',
      provider: 'openai',
      now: NOW,
      charges: [charge('calls', 10, 1), charge('cost', 100, 200)],
    });
    expect(refused).toMatchObject({
      admitted: false,
      exceeded: { charge: { metric: 'cost' }, used: 0, reserved: 0 },
    });
    const counters = await store.readCounters('u', [
      { scope: '*', metric: 'calls', periodKey: 'month:2026-11-01' },
      { scope: '*', metric: 'cost', periodKey: 'month:2026-11-01' },
    ]);
    expect(counters.map((c) => [c.used, c.reserved])).toEqual([
      [0, 0],
      [0, 0],
    ]);
  });

  it('group-commits concurrent settlements; counters equal the ledger and survive a reopen', async () => {
    const reservations: Reservation[] = [];
    for (let i = 0; i < 250; i++) {
      const r = await store.reserve({
        requestId: `req-${String(i).padStart(4, '0')}`,
        userId: 'u',
        provider: 'openai',
        now: NOW,
        charges: [charge('calls', 200, 1), charge('tokens', 1_000_000, 100)],
      });
      if (r.admitted) reservations.push(r.reservation);
    }
    expect(reservations).toHaveLength(200);
    await Promise.all(reservations.map((r, i) => store.settle(r, settlement(r, i % 7))));
    expect(await store.flush()).toBe(true); // the journal's rows, applied to the user's file now
    const file = store.filePath('u');
    expect(await query(file, 'SELECT COUNT(*) AS n, SUM(input_tokens) AS t FROM usage_events')).toEqual([
      { n: 200, t: reservations.reduce((s, _r, i) => s + (i % 7), 0) },
    ]);
    expect(await query(file, 'SELECT metric, used FROM usage_counters ORDER BY metric')).toEqual([
      { metric: 'calls', used: 200 },
      { metric: 'tokens', used: reservations.reduce((s, _r, i) => s + (i % 7), 0) },
    ]);
    await store.close();
    await openStore();
    const again = await store.reserve({
      requestId: 'next',
      userId: 'u',
      provider: 'openai',
      now: NOW,
      charges: [charge('calls', 200, 1)],
    });
    expect(again).toMatchObject({ admitted: false, exceeded: { used: 200 } });
  });

  it('release gives a reservation back without charging', async () => {
    const r = await store.reserve({
      requestId: 'x',
      userId: 'v',
      provider: 'openai',
      now: NOW,
      charges: [charge('calls', 1, 1)],
    });
    expect(r.admitted).toBe(true);
    const second = await store.reserve({
      requestId: 'y',
      userId: 'v',
      provider: 'openai',
      now: NOW,
      charges: [charge('calls', 1, 1)],
    });
    expect(second.admitted).toBe(false);
    if (r.admitted) store.release(r.reservation);
    const third = await store.reserve({
      requestId: 'z',
      userId: 'v',
      provider: 'openai',
      now: NOW,
      charges: [charge('calls', 1, 1)],
    });
    expect(third.admitted).toBe(true);
  });
});

describe('PerUserSqliteStore durable intent', () => {
  it('refuses a request whose intent cannot be written and gives its quota back; charges one left unsettled at the next start, once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'usage-store-intent-'));
    const options = { ...storeOptions(dir, 8, 0), durableIntent: true };
    let store = new PerUserSqliteStore(options);
    await store.init();
    const request = (requestId: string) => {
      const event = settlement({ requestId, userId: 'v' } as Reservation, 7).event;
      return {
        requestId,
        userId: 'v',
        provider: 'openai',
        now: NOW,
        charges: [charge('calls', 1, 1)],
        interrupted: { ...event, outcome: 'interrupted' as const, estimated: true },
      };
    };
    try {
      // The intent log's file on a full device: the write fails.
      const segment = (store as unknown as { intents: { segments: { fd: number }[] } }).intents.segments.at(
        -1,
      )!;
      const fd = segment.fd;
      segment.fd = openSync('/dev/full', 'a');
      await expect(store.reserve(request('refused'))).rejects.toMatchObject({ reason: 'operational_error' });
      expect(await store.health()).toEqual({ up: false, reason: 'usage writes failing' });
      closeSync(segment.fd);
      segment.fd = fd;
      // The refused request's quota is free again (a limit of 1 call): the next one is admitted.
      const admitted = await store.reserve(request('admitted'));
      expect(admitted).toMatchObject({ admitted: true, reservation: { intent: true } });
      expect(await store.health()).toEqual({ up: true });
      // Closed with it unsettled (as a crash would leave it): the next start charges it, at its estimate.
      await store.close();
      expect(readdirSync(dir).filter(isIntentLogFile)).toHaveLength(1);
      for (let start = 0; start < 2; start++) {
        store = new PerUserSqliteStore(options);
        await store.init();
        await store.close();
      }
      expect(readdirSync(dir).filter(isIntentLogFile)).toEqual([]);
      const rows = await query(
        join(dir, userFileName('v')),
        'SELECT request_id, outcome, estimated FROM usage_events',
      );
      expect(rows).toEqual([{ request_id: 'admitted', outcome: 'interrupted', estimated: 1 }]);
      const counters = await query(
        join(dir, userFileName('v')),
        "SELECT used FROM usage_counters WHERE metric = 'calls'",
      );
      expect(counters).toEqual([{ used: 1 }]);
      store = new PerUserSqliteStore(options);
      await store.init();
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('PerUserSqliteStore.pendingWrites', () => {
  it("counts journaled rows waiting for an open user's file and for a parked user's", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'usage-pending-spec-'));
    // One open file, rows applied after a minute: what waits is ours to count.
    const store = storeAt(dir, 1, 60_000, { maxUsersInMemory: 10 });
    await store.init();
    const settle = (userId: string, requestId: string) =>
      settleAs(store, userId, requestId, [charge('calls', 100, 1)], 1);
    /** The count once the journal's commit has finished (a commit running counts as one write). */
    const pending = async (n: number) => {
      for (const end = Date.now() + 2_000; store.pendingWrites() !== n && Date.now() < end;)
        await new Promise((resolve) => setTimeout(resolve, 5));
      return store.pendingWrites();
    };
    try {
      await settle('a', 'a1');
      await settle('a', 'a2');
      expect(await pending(2)).toBe(2); // a's, waiting in its open file's writer
      await settle('b', 'b1'); // a's file closes (its rows applied), a is kept in memory
      for (let i = 3; i <= 5; i++) await settle('a', `a${i}`); // parked: journaled, waiting for a's file
      expect(await pending(4)).toBe(4); // and b's
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('PerUserSqliteStore start-up with rows a crash left in the journal', () => {
  it('applies them once, in this version’s entry format and in the object format of earlier versions', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'usage-journal-spec-'));
    const options = storeOptions(dir, 8, 0);
    try {
      // Journaled and never applied: what a crash between the two commits leaves.
      const journal = await UsageJournal.open(dir, {
        busyTimeoutMs: 1000,
        synchronous: 'normal',
        driver: 'sqlite3',
      });
      const reservation = (id: string): Reservation => ({
        requestId: id,
        userId: 'u',
        provider: 'openai',
        charges: [],
        createdAt: NOW,
      });
      const delta = { periodKey: 'month:2026-11-01', scope: '*', metric: 'calls', periodEnd: END, amount: 1 };
      const journaled = new Promise<void>((resolve) =>
        journal.append(
          'u',
          { event: settlement(reservation('new-format'), 7).event, deltas: [delta] },
          () => undefined,
          () => resolve(),
        ),
      );
      await journaled;
      expect(await journal.drain()).toBe(true);
      await journal.close();
      const old = JSON.stringify([
        'u',
        { event: settlement(reservation('old-format'), 5).event, deltas: [delta] },
      ]);
      await new Promise<void>((resolve, reject) => {
        const db = new Database(join(dir, JOURNAL_FILE), (e) => {
          if (e) return reject(e);
          db.run('INSERT INTO usage_journal (entry) VALUES (?)', [old], (err) =>
            db.close(() => (err ? reject(err) : resolve())),
          );
        });
      });
      const store = new PerUserSqliteStore(options);
      await store.init();
      await store.close();
      const file = store.filePath('u');
      expect(
        await query(
          file,
          'SELECT request_id, input_tokens, counter_deltas IS NOT NULL AS d FROM usage_events ORDER BY request_id',
        ),
      ).toEqual([
        { request_id: 'new-format', input_tokens: 7, d: 1 },
        { request_id: 'old-format', input_tokens: 5, d: 1 },
      ]);
      expect(await query(file, "SELECT used FROM usage_counters WHERE metric = 'calls'")).toEqual([
        { used: 2 },
      ]);
      expect(await query(join(dir, JOURNAL_FILE), 'SELECT COUNT(*) AS n FROM usage_journal')).toEqual([
        { n: 0 },
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Opens each user's file (an admission does) and lets everything settle, so later settlements are one turn. */
async function openFiles(store: PerUserSqliteStore, users: string[]): Promise<void> {
  for (const userId of users) {
    const r = await store.reserve({
      requestId: `${userId}-open`,
      userId,
      provider: 'openai',
      now: NOW,
      charges: [],
    });
    if (r.admitted) store.release(r.reservation);
  }
  await store.flush();
}

async function ledgerRows(store: PerUserSqliteStore, userId: string): Promise<number> {
  return Number((await query(store.filePath(userId), 'SELECT COUNT(*) AS n FROM usage_events'))[0].n);
}

describe('PerUserSqliteStore apply pacing', () => {
  it('spaces the open users’ delayed commits: 10 ms more per user waiting, the base delay for the first ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'usage-store-pacing-'));
    const store = storeAt(dir, 128, 100);
    await store.init();
    const rows = (userId: string) => ledgerRows(store, userId);
    const waiting = () => (store as unknown as { pacer: { waitingUsers: number } }).pacer.waitingUsers;
    try {
      // 100 users, one request each, settled in one turn: user i's row waits max(100, 10 × (i + 1)) ms.
      const users = Array.from({ length: 100 }, (_, i) => `pace-${i}`);
      await openFiles(store, users);
      await Promise.all(
        users.map((userId) => settleAs(store, userId, `${userId}-r`, [charge('calls', 10, 1)], 3)),
      );
      await new Promise((resolve) => setImmediate(resolve));
      expect(waiting()).toBe(100);
      await new Promise((resolve) => setTimeout(resolve, 400));
      // The first users' rows are in their files (100 ms), the last one's still waits (1 s).
      expect(await rows('pace-0')).toBe(1);
      expect(await rows('pace-99')).toBe(0);
      expect(waiting()).toBeLessThan(100);
      expect(waiting()).toBeGreaterThan(0);
      // A flush applies them all at once and nobody is left waiting.
      expect(await store.flush()).toBe(true);
      expect(waiting()).toBe(0);
      for (const userId of users) expect(await rows(userId)).toBe(1);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('PerUserSqliteStore parked apply pacing', () => {
  it('applies parked users’ rows at the pace of the open ones: 10 ms per user waiting, counting both, one apply per user', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'usage-store-parked-pacing-'));
    // 2 open files, 100 ms base delay, every user kept in memory once its file closes.
    const store = storeAt(dir, 2, 100, { maxUsersInMemory: 100 });
    await store.init();
    const rows = (userId: string) => ledgerRows(store, userId);
    const pacer = () =>
      (store as unknown as { pacer: { waitingUsers: number; parkedWaiting: number } }).pacer;
    try {
      const users = Array.from({ length: 60 }, (_, i) => `parked-pace-${i}`);
      await openFiles(store, users);
      expect(store.usersInMemory).toBe(58);
      // One request each, settled at once: 58 parked and 2 open users' rows wait max(100, 60 × 10) ms.
      const started = Date.now();
      await Promise.all(
        users.map((userId) => settleAs(store, userId, `${userId}-r1`, [charge('calls', 10, 1)], 3)),
      );
      expect(pacer().parkedWaiting).toBe(58);
      expect(pacer().waitingUsers).toBe(2);
      // A second request of a parked user while its first row waits: both reach its file in one apply.
      await settleAs(store, users[0], `${users[0]}-r2`, [charge('calls', 10, 1)], 3);
      await new Promise((resolve) => setTimeout(resolve, 250));
      // Without the pacing, parked rows were applied after 100 ms, one user after another.
      for (const userId of [users[0], users[30], users[59]]) expect(await rows(userId)).toBe(0);
      let first = 0;
      while (first === 0 && Date.now() - started < 5_000) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        first = await rows(users[0]);
      }
      expect(first).toBe(2);
      expect(Date.now() - started).toBeGreaterThanOrEqual(550);
      for (let i = 0; i < 250 && pacer().parkedWaiting > 0; i++)
        await new Promise((resolve) => setTimeout(resolve, 20));
      expect(pacer().parkedWaiting).toBe(0);
      expect(store.pendingWrites()).toBe(0);
      for (const userId of users) expect(await rows(userId)).toBe(userId === users[0] ? 2 : 1);
      expect(
        await query(store.filePath(users[0]), "SELECT used FROM usage_counters WHERE metric = 'calls'"),
      ).toEqual([{ used: 2 }]);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('PerUserSqliteStore rows of a parked user being applied', () => {
  it('counts them as pending until they are in the file, while the apply waits on a locked file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'usage-store-parked-applying-'));
    // 1 open file, 50 ms delay: the first user is parked once the second opens.
    const store = storeAt(dir, 1, 50, { maxUsersInMemory: 10 });
    await store.init();
    let holder: Database | undefined;
    try {
      await openFiles(store, ['applying-a', 'applying-b']);
      expect(store.usersInMemory).toBe(1);
      // Another connection holds the parked user's write lock: the apply waits (busy timeout 1 s), then fails.
      holder = new Database(store.filePath('applying-a'));
      await new Promise<void>((resolve, reject) =>
        holder!.exec('BEGIN IMMEDIATE', (e) => (e ? reject(e) : resolve())),
      );
      await settleAs(store, 'applying-a', 'applying-a-r1', [charge('calls', 10, 1)], 3);
      await new Promise((resolve) => setTimeout(resolve, 400));
      // The apply took the row 50 ms in and is waiting on the lock: the row is not in the file yet.
      expect(await ledgerRows(store, 'applying-a')).toBe(0);
      expect(store.pendingWrites()).toBe(1);
      await new Promise<void>((resolve, reject) =>
        holder!.exec('ROLLBACK', (e) => (e ? reject(e) : resolve())),
      );
      for (let i = 0; i < 250 && store.pendingWrites() > 0; i++)
        await new Promise((resolve) => setTimeout(resolve, 20));
      expect(store.pendingWrites()).toBe(0);
      expect(await ledgerRows(store, 'applying-a')).toBe(1);
    } finally {
      await new Promise((resolve) => (holder ? holder.close(resolve) : resolve(undefined)));
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
