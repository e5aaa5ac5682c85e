import { Agent } from 'node:http';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import request from 'supertest';
import {
  UsageAdminService,
  type LimitShare,
  type Plan,
  type PlanAssignment,
  type TopSpender,
  type UserOverShare,
} from '@app/usage-monitoring';
import { periodWindow } from '@app/usage-monitoring/plans/billing-period';
import type { LimitMetric, PeriodUnit } from '@app/usage-monitoring/plans/plan.interface';
import { microsToUsd } from '@app/usage-monitoring/pricing/money';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';
import { JOURNAL_FILE } from '@app/usage-monitoring/storage/sqlite/usage-journal';
import { openSqliteFile } from './utils/sqlite-file';
import { createTestApp, tempDataDir, type TestApp } from './utils/create-test-app';
import { postStatus } from './utils/post-status';
import { spawnServer, type ServerProcess } from './utils/spawn-server';
import { queryUserDb, queryUserDbs } from './utils/user-db';
import { describeSqlite, describeStore } from './utils/test-store';
import { ADMIN_KEY as ADMIN, AdminKeyGuard } from './utils/admin-key.guard';

/**
 * The admin API's `list` and `top` read a summary (the per-user store's index, the shared store's tables),
 * never every user's file. Here they are checked against a brute-force scan of every user's ledger over
 * 2,000 users: in process on both stores, and on the per-user store after a SIGKILL and a restart.
 */

const USERS = 2_000;
const NOV_10 = Date.UTC(2026, 10, 10, 12);
const DEC_5 = Date.UTC(2026, 11, 5, 12);

interface LedgerRow {
  provider: string;
  input_tokens: number;
  output_tokens: number;
  cost_micros: number;
  period_key: string;
  occurred_at: number;
}

/** A limit of the oracle, `max` in store units (micro-dollars for cost). */
interface OracleLimit {
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  max: number;
  mode: 'enforce' | 'shadow';
}

interface OracleUser {
  id: string;
  rows: LedgerRow[];
  limits: OracleLimit[];
  anchorDay: number;
}

const LEDGER_SQL =
  'SELECT provider, input_tokens, output_tokens, cost_micros, period_key, occurred_at FROM usage_events';

const amountOf = (r: LedgerRow, metric: LimitMetric) =>
  metric === 'calls' ? 1 : metric === 'tokens' ? r.input_tokens + r.output_tokens : r.cost_micros;
/** Every scope of these plans covers the OpenAI rows the tests make (`openai`, `ai_text`, `*`). */
const inScope = (scope: string, provider: string) =>
  scope === '*' || scope === provider || (scope === 'ai_text' && provider === 'openai');
const byCodePoint = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** What `list({ over })` must answer, from every user's ledger rows. */
function expectedList(users: OracleUser[], now: number, over: number): UserOverShare[] {
  const out: { user: UserOverShare; ratio: number }[] = [];
  for (const u of users) {
    const shares: { share: LimitShare; ratio: number }[] = [];
    for (const l of u.limits) {
      const w = periodWindow(l.period, now, u.anchorDay);
      const inPeriod = (r: LedgerRow) =>
        l.period === 'month' ? r.period_key === w.key : r.occurred_at >= w.start && r.occurred_at < w.end;
      const used = u.rows
        .filter((r) => inPeriod(r) && inScope(l.scope, r.provider))
        .reduce((n, r) => n + amountOf(r, l.metric), 0);
      if (used <= 0) continue;
      const ratio = l.max <= 0 ? 1 : used / l.max;
      if (ratio < over) continue;
      const money = (n: number) => (l.metric === 'cost' ? microsToUsd(n) : n);
      shares.push({
        ratio,
        share: {
          scope: l.scope,
          metric: l.metric,
          period: l.period,
          mode: l.mode,
          period_key: w.key,
          used: money(used),
          max: money(l.max),
          share: Math.round(ratio * 10_000) / 10_000,
        },
      });
    }
    shares.sort((a, b) => b.ratio - a.ratio);
    if (shares.length)
      out.push({
        ratio: shares[0].ratio,
        user: { user_id: u.id, share: shares[0].share.share, limits: shares.map((s) => s.share) },
      });
  }
  out.sort((a, b) => b.ratio - a.ratio || byCodePoint(a.user.user_id, b.user.user_id));
  return out.map((x) => x.user);
}

/** What `top({ by, limit })` must answer: totals of each user's current billing month. */
function expectedTop(
  users: OracleUser[],
  now: number,
  by: 'calls' | 'tokens' | 'cost',
  limit: number,
): TopSpender[] {
  const totals = users
    .map((u) => {
      const key = periodWindow('month', now, u.anchorDay).key;
      const rows = u.rows.filter((r) => r.period_key === key);
      return {
        user_id: u.id,
        calls: rows.length,
        tokens: rows.reduce((n, r) => n + r.input_tokens + r.output_tokens, 0),
        micros: rows.reduce((n, r) => n + r.cost_micros, 0),
        period_key: key,
      };
    })
    .filter((t) => t.calls > 0);
  const value = (t: (typeof totals)[number]) => (by === 'cost' ? t.micros : t[by]);
  totals.sort((a, b) => value(b) - value(a) || byCodePoint(a.user_id, b.user_id));
  return totals.slice(0, limit).map((t) => ({
    user_id: t.user_id,
    calls: t.calls,
    tokens: t.tokens,
    cost: microsToUsd(t.micros),
    period_key: t.period_key,
  }));
}

/** Runs `work(i)` for i in [0, n) with `concurrency` at once. */
async function pool(n: number, concurrency: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) await work(next++);
    }),
  );
}

/** A chat body whose usage differs per user, so that totals differ. */
const chatBody = (i: number) => ({
  max_tokens: 10,
  report: { prompt: 10 + (i % 13) * 3, completion: 5 + (i % 5) },
});

const SPENDING_PLANS: Plan[] = [
  {
    name: 'small',
    limits: [
      { metric: 'calls', scope: 'openai', period: 'month', max: 5 },
      { metric: 'tokens', scope: 'openai', period: 'day', max: 120 },
      { metric: 'cost', scope: '*', period: 'month', max: 0.00005, mode: 'shadow' },
    ],
  },
  { name: 'anchored', limits: [{ metric: 'calls', scope: 'openai', period: 'month', max: 4 }] },
];
const ORACLE_LIMITS: Record<string, OracleLimit[]> = {
  small: [
    { scope: 'openai', metric: 'calls', period: 'month', max: 5, mode: 'enforce' },
    { scope: 'openai', metric: 'tokens', period: 'day', max: 120, mode: 'enforce' },
    { scope: '*', metric: 'cost', period: 'month', max: 50, mode: 'shadow' },
  ],
  anchored: [{ scope: 'openai', metric: 'calls', period: 'month', max: 4, mode: 'enforce' }],
};
/** Every third user is billed from the 20th; the others from the 1st. */
const anchorOf = (i: number) => (i % 3 === 0 ? 20 : 1);
const spender = (i: number) => `spender-${String(i).padStart(4, '0')}`;
const assignment = (userId: string): PlanAssignment => {
  const i = Number(userId.slice('spender-'.length));
  return anchorOf(i) === 20 ? { plan: 'anchored', billingAnchorDay: 20 } : 'small';
};

describeStore('admin API: who is spending (list and top) over 2,000 users', () => {
  let t: TestApp;
  let admin: UsageAdminService;
  let now = NOV_10;
  const users: OracleUser[] = [];

  beforeAll(async () => {
    t = await createTestApp({
      usage: {
        plans: SPENDING_PLANS,
        plan: assignment,
        clock: () => now,
        enforcementTimeoutMs: 10_000,
      },
      adminController: { guards: [AdminKeyGuard] },
    });
    admin = t.app.get(UsageAdminService);
    const agent = new Agent({ keepAlive: true, maxSockets: 32 });
    const post = (i: number) =>
      postStatus(`${t.url}/openai/v1/chat/completions`, agent, spender(i), chatBody(i));
    // Last month (November 10: the previous period of users billed from the 1st, the current one of
    // those billed from the 20th)...
    await pool(USERS, 32, async (i) => {
      if (i % 4 === 0) for (let k = 0; k < 2; k++) await post(i);
    });
    // ...then December 5: 0 to 6 requests per user, some refused.
    now = DEC_5;
    await pool(USERS, 32, async (i) => {
      for (let k = 0; k < i % 7; k++) await post(i);
    });
    agent.destroy();
    // The brute force: every user's ledger, read on its own.
    const ids = Array.from({ length: USERS }, (_, i) => spender(i));
    const ledgers = await queryUserDbs<LedgerRow>(t, ids, LEDGER_SQL);
    ids.forEach((id, i) => {
      const plan = anchorOf(i) === 20 ? 'anchored' : 'small';
      users.push({ id, rows: ledgers[i], limits: ORACLE_LIMITS[plan], anchorDay: anchorOf(i) });
    });
  }, 600_000);
  afterAll(() => t.close());

  it('list({ over }) equals the brute-force scan of every ledger, at 80 % and 50 %', async () => {
    const at80 = expectedList(users, DEC_5, 0.8);
    // The scenario reaches many users over a share, on each kind of limit, shadow included.
    expect(at80.length).toBeGreaterThan(500);
    const kinds = new Set(at80.flatMap((u) => u.limits.map((l) => `${l.metric}:${l.mode}`)));
    expect([...kinds].sort()).toEqual(['calls:enforce', 'cost:shadow', 'tokens:enforce']);
    expect(await admin.list({ over: 0.8, limit: 10_000 })).toEqual(at80);
    expect(await admin.list({ over: 0.5, limit: 10_000 })).toEqual(expectedList(users, DEC_5, 0.5));
    // The default page is the first 100.
    expect(await admin.list({ over: 0.8 })).toEqual(at80.slice(0, 100));
  });

  it('top({ by }) equals the brute-force totals of each user’s current billing month', async () => {
    expect(await admin.top()).toEqual(expectedTop(users, DEC_5, 'cost', 10));
    expect(await admin.top({ by: 'tokens', limit: 25 })).toEqual(expectedTop(users, DEC_5, 'tokens', 25));
    const calls = expectedTop(users, DEC_5, 'calls', 1_000);
    expect(calls.length).toBe(1_000);
    // Users billed from the 20th count November 10 in their current month; the others do not.
    expect(new Set(calls.map((c) => c.period_key))).toEqual(
      new Set(['month:2026-11-20', 'month:2026-12-01']),
    );
    expect(await admin.top({ by: 'calls', limit: 1_000 })).toEqual(calls);
  });

  it('answers over HTTP behind the host guard: the same lists, 400 on bad input, 403 without the guard', async () => {
    const list = await request(t.url).get('/usage/admin/users?over=0.8&limit=20').set(ADMIN);
    expect(list.status).toBe(200);
    expect(list.body).toEqual(expectedList(users, DEC_5, 0.8).slice(0, 20));
    const top = await request(t.url).get('/usage/admin/top?by=tokens&limit=5').set(ADMIN);
    expect(top.status).toBe(200);
    expect(top.body).toEqual(expectedTop(users, DEC_5, 'tokens', 5));
    expect((await request(t.url).get('/usage/admin/users?over=0.8')).status).toBe(403);
    expect((await request(t.url).get('/usage/admin/top')).status).toBe(403);
    const bad = await request(t.url).get('/usage/admin/users?over=abc').set(ADMIN);
    expect(bad.status).toBe(400);
    expect(bad.body).toEqual({ error: 'Invalid adjustment', message: 'over must be a number' });
    const missing = await request(t.url).get('/usage/admin/users').set(ADMIN);
    expect(missing.body.message).toBe('over must be a number above 0 (0.8 for 80 %)');
    const by = await request(t.url).get('/usage/admin/top?by=bytes').set(ADMIN);
    expect(by.body.message).toBe('by must be one of cost, tokens, calls');
    const many = await request(t.url).get('/usage/admin/top?limit=1001').set(ADMIN);
    expect(many.body.message).toBe('limit must be an integer from 1 to 1000');
  });

  it('a reset, a grant and an override take a user off the list at once', async () => {
    const before = await admin.list({ over: 0.8, limit: 10_000 });
    // Users over 80 % of their calls limit only.
    const [a, b, c] = before
      .filter((u) => u.limits.length === 1 && u.limits[0].metric === 'calls' && u.limits[0].used === 4)
      .map((u) => u.user_id);
    const note = { actor: 'ops@example.com', reason: 'spending test' };
    const sel = { scope: 'openai', metric: 'calls', period: 'month' } as const;
    await admin.reset(a, { ...sel, ...note });
    await admin.grant(b, { ...sel, amount: 100, ...note });
    await admin.setLimit(c, { ...sel, max: 1_000, ...note });
    expect(await admin.list({ over: 0.8, limit: 10_000 })).toEqual(
      before.filter((u) => ![a, b, c].includes(u.user_id)),
    );
    // A lower threshold still finds the granted user, against the limit as granted.
    const low = (await admin.list({ over: 0.01, limit: 10_000 })).find((u) => u.user_id === b);
    const granted = low?.limits.find((l) => l.metric === 'calls');
    expect(granted).toMatchObject({ max: 104, share: Math.round((4 / 104) * 10_000) / 10_000 });
  });
});

describeSqlite('admin API: the spending summary after a SIGKILL and a restart', () => {
  const dataDir = tempDataDir();
  const env = {
    USAGE_TEST_DATA_DIR: dataDir,
    USAGE_TEST_DURABLE_INTENT: '1',
    USAGE_TEST_ADMIN: '1',
    // A minute's apply delay: at the kill, acknowledged rows are in the journal only.
    USAGE_TEST_JOURNAL_MS: '60000',
    USAGE_TEST_ENFORCEMENT_TIMEOUT_MS: '10000',
  };
  let server: ServerProcess | undefined;
  afterAll(async () => {
    await server?.stop('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('list and top equal the brute-force scan of 2,000 users’ ledgers after the process is killed mid-load', async () => {
    // A retry starts afresh: the failed attempt's server still owns the data directory.
    await server?.stop('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
    mkdirSync(dataDir, { recursive: true });
    server = await spawnServer(env, 60_000);
    const url = server.url;
    const agent = new Agent({ keepAlive: true, maxSockets: 48 });
    const user = (i: number) => `plan=hundred;killed-${String(i).padStart(4, '0')}`;
    // Requests held by the handler when the process dies: charged at their estimate at the restart.
    const stuck = Array.from({ length: 40 }, (_, i) =>
      postStatus(`${url}/openai/v1/chat/completions`, agent, user(i * 50), {
        delayMs: 60_000,
        max_tokens: 40,
      }),
    );
    let answered = 0;
    const load = pool(USERS, 40, async (i) => {
      for (let k = 0; k < 1 + (i % 4); k++) {
        const status = await postStatus(`${url}/openai/v1/chat/completions`, agent, user(i), chatBody(i));
        if (status === 200) answered++;
        if (status === 0) return;
      }
    });
    // Killed once 3,000 requests have been answered, with the rest of the load still running.
    while (answered < 3_000) await new Promise((r) => setTimeout(r, 20));
    expect(await server.stop('SIGKILL')).toBe('SIGKILL');
    await load;
    await Promise.all(stuck);
    agent.destroy();

    server = await spawnServer(env, 120_000);
    const restarted = server.url;
    const now = Date.now();
    const oracle: OracleUser[] = [];
    let interrupted = 0;
    for (let i = 0; i < USERS; i++) {
      const id = user(i);
      if (!existsSync(join(dataDir, userFileName(id)))) continue;
      const rows = await queryUserDb<LedgerRow & { outcome: string }>(
        dataDir,
        id,
        `${LEDGER_SQL.replace('SELECT ', 'SELECT outcome, ')}`,
      );
      interrupted += rows.filter((r) => r.outcome === 'interrupted').length;
      oracle.push({
        id,
        rows,
        anchorDay: 1,
        limits: [
          { scope: 'openai', metric: 'calls', period: 'month', max: 100, mode: 'enforce' },
          { scope: 'ai_text', metric: 'tokens', period: 'month', max: 1_000_000, mode: 'enforce' },
          { scope: '*', metric: 'cost', period: 'day', max: 1_000_000_000, mode: 'enforce' },
        ],
      });
    }
    // The kill left work of each kind: answered rows in the journal only, and interrupted requests.
    expect(oracle.reduce((n, u) => n + u.rows.length, 0)).toBeGreaterThanOrEqual(3_000);
    // The 40 held requests, and any of the load the kill caught in its handler.
    expect(interrupted).toBeGreaterThanOrEqual(40);
    const get = async (path: string) => {
      const res = await request(restarted).get(path).set(ADMIN);
      expect(res.status).toBe(200);
      return res.body as unknown;
    };
    expect(await get('/usage/admin/users?over=0.03&limit=10000')).toEqual(expectedList(oracle, now, 0.03));
    expect(await get('/usage/admin/top?by=calls&limit=1000')).toEqual(
      expectedTop(oracle, now, 'calls', 1_000),
    );
    expect(await get('/usage/admin/top?by=cost&limit=50')).toEqual(expectedTop(oracle, now, 'cost', 50));
    expect(await get('/usage/admin/top?by=tokens&limit=50')).toEqual(expectedTop(oracle, now, 'tokens', 50));

    // A data directory of a version without the summary: it is built from the users' files at start-up.
    await server.stop();
    const journal = await openSqliteFile(join(dataDir, JOURNAL_FILE));
    for (const table of ['usage_summary_counters', 'usage_summary_totals', 'usage_summary_state'])
      await journal.run(`DROP TABLE ${table}`, []).catch((e: Error) => {
        e.message = `${e.message} (dropping ${table} from the stopped server's journal)`;
        throw e;
      });
    await journal.close();
    server = await spawnServer(env, 120_000);
    const rebuilt = server.url;
    const again = async (path: string) => (await request(rebuilt).get(path).set(ADMIN)).body as unknown;
    expect(await again('/usage/admin/users?over=0.03&limit=10000')).toEqual(expectedList(oracle, now, 0.03));
    expect(await again('/usage/admin/top?by=calls&limit=1000')).toEqual(
      expectedTop(oracle, now, 'calls', 1_000),
    );
  }, 600_000);
});
