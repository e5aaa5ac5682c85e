import request from 'supertest';
import { UsageAdminService, UsageMonitoringModule } from '@app/usage-monitoring';
import { rmSync } from 'node:fs';
import { createTestApp, TEST_PLANS, tempDataDir, type TestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { createSchema, describePostgres, describeStore, dropSchema, STORE } from './utils/test-store';
import { AdminKeyGuard } from './utils/admin-key.guard';

const NOV_15_NOON = Date.UTC(2026, 10, 15, 12, 0, 0);
const DEC_1 = '2026-12-01T00:00:00.000Z';
const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };
const OPENAI_CALLS = { scope: 'openai', metric: 'calls', period: 'month' } as const;
const AI_TEXT_CALLS = { scope: 'ai_text', metric: 'calls', period: 'month' } as const;
const note = { actor: 'ops@example.com', reason: 'support ticket 1234' };

describeStore('admin API: grants, resets and limit overrides', () => {
  let t: TestApp;
  let admin: UsageAdminService;
  let now = NOV_15_NOON;

  beforeAll(async () => {
    t = await createTestApp({
      usage: { clock: () => now, enforcementTimeoutMs: 5_000 },
      adminController: { guards: [AdminKeyGuard] },
    });
    admin = t.app.get(UsageAdminService);
  });
  afterAll(() => t.close());
  beforeEach(() => {
    now = NOV_15_NOON;
  });

  const post = (user: string) =>
    request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat);
  const wave = async (user: string, n: number) =>
    (await Promise.all(Array.from({ length: n }, () => post(user)))).filter((r) => r.status === 200).length;
  const openaiCalls = async (user: string) =>
    (
      await queryUserDb<{ used: number }>(
        t,
        user,
        "SELECT used FROM usage_counters WHERE metric = 'calls' AND scope = 'openai'",
      )
    )[0].used;
  const ledgerRows = async (user: string) =>
    (await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM usage_events'))[0].n;
  const limitOf = async (user: string, scope: string) => {
    const res = await request(t.url)
      .get(`/usage/admin/users/${encodeURIComponent(user)}`)
      .set('x-admin-key', 'let-me-in');
    return (res.body.usage.limits as { scope: string; metric: string }[]).find(
      (l) => l.scope === scope && l.metric === 'calls',
    );
  };

  /**
   * 200 parallel requests with `change` made while they run, then 200 more: exactly `expected` admitted in
   * all, counter and ledger equal to it.
   */
  async function race(user: string, change: () => Promise<unknown>, expected: number, before = 0) {
    const first = Promise.all(Array.from({ length: 200 }, () => post(user)));
    await new Promise((r) => setTimeout(r, 5));
    await change();
    const admittedFirst = (await first).filter((r) => r.status === 200).length;
    const admittedThen = await wave(user, 200);
    expect(admittedFirst + admittedThen).toBe(expected);
    expect(await openaiCalls(user)).toBe(before + expected);
    expect(await ledgerRows(user)).toBe(before + expected);
  }

  it('a grant admits exactly that many more calls this period, also while 200 parallel requests race it', async () => {
    const user = 'plan=hundred;granted';
    await race(user, () => admin.grant(user, { ...OPENAI_CALLS, amount: 50, ...note }), 150);
    const refused = await post(user);
    expect(refused.status).toBe(429);
    expect(refused.body.message).toBe(
      `Monthly calls limit for openai reached (150 of 150 used). It resets at ${DEC_1}.`,
    );
    expect(refused.body.usage_info).toMatchObject({ current: 150, limit: 150, percentage: 100 });
    expect(refused.headers['x-ratelimit-limit']).toBe('150');
    expect(await limitOf(user, 'openai')).toMatchObject({ used: 150, limit: 150, remaining: 0 });
  });

  it('a reset starts the period over: exactly the limit again, also while 200 parallel requests race it', async () => {
    const user = 'plan=hundred;reset';
    expect(await wave(user, 100)).toBe(100);
    expect((await post(user)).status).toBe(429);
    let resets: unknown[] = [];
    await race(
      user,
      async () => (resets = await admin.reset(user, { scope: 'openai', metric: 'calls', ...note })),
      100,
      100,
    );
    expect(resets).toEqual([
      expect.objectContaining({ kind: 'reset', scope: 'openai', metric: 'calls', amount: 100 }),
    ]);
    // The report shows the period as reset: 100 of 100 used since, not 200.
    expect(await limitOf(user, 'openai')).toMatchObject({ used: 100, limit: 100, remaining: 0 });
    const refused = await post(user);
    expect(refused.body.usage_info).toMatchObject({ current: 100, limit: 100 });
  });

  it('two resets at once forgive the usage once', async () => {
    const user = 'twice-reset';
    for (let i = 0; i < 5; i++) expect((await post(user)).status).toBe(200);
    const [a, b] = await Promise.all([
      admin.reset(user, { ...AI_TEXT_CALLS, ...note }),
      admin.reset(user, { ...AI_TEXT_CALLS, ...note }),
    ]);
    expect([a[0].amount, b[0].amount].sort()).toEqual([0, 5]);
    expect(await wave(user, 10)).toBe(5);
  });

  it('an override sets a new limit for good, also while 200 parallel requests race it; clearing it puts the plan back', async () => {
    const user = 'plan=hundred;override';
    await race(user, () => admin.setLimit(user, { ...OPENAI_CALLS, max: 150, ...note }), 150);
    expect((await post(user)).body.usage_info).toMatchObject({ current: 150, limit: 150 });
    // Lowered below what is used: refused at once.
    await admin.setLimit(user, { ...OPENAI_CALLS, max: 120, ...note });
    expect((await post(user)).body.usage_info).toMatchObject({ current: 150, limit: 120 });
    expect(await admin.overrides(user)).toEqual([
      { scope: 'openai', metric: 'calls', period: 'month', plan_max: 100, max: 120, until: null },
    ]);
    await admin.clearLimit(user, { ...OPENAI_CALLS, ...note });
    expect(await admin.overrides(user)).toEqual([]);
    expect((await post(user)).body.usage_info).toMatchObject({ current: 150, limit: 100 });
    expect(await limitOf(user, 'openai')).toMatchObject({ used: 150, limit: 100 });
  });

  it('a temporary increase ends on its date', async () => {
    const user = 'temporary';
    const until = new Date(NOV_15_NOON + 3_600_000);
    await admin.setLimit(user, { ...AI_TEXT_CALLS, max: 7, until, ...note });
    for (let i = 0; i < 6; i++) expect((await post(user)).status).toBe(200);
    expect(await admin.overrides(user)).toEqual([
      { scope: 'ai_text', metric: 'calls', period: 'month', plan_max: 5, max: 7, until: until.toISOString() },
    ]);
    now = until.getTime() - 1;
    expect((await post(user)).status).toBe(200);
    expect((await post(user)).body.usage_info).toMatchObject({ current: 7, limit: 7 });
    now = until.getTime();
    const after = await post(user);
    expect(after.status).toBe(429);
    expect(after.body.usage_info).toMatchObject({ current: 7, limit: 5 });
    expect(await admin.overrides(user)).toEqual([]);
    expect(await limitOf(user, 'ai_text')).toMatchObject({ used: 7, limit: 5 });
  });

  it('keeps every change with who, when and why, newest first', async () => {
    const user = 'history';
    now = NOV_15_NOON;
    await admin.grant(user, { ...AI_TEXT_CALLS, amount: 2, actor: 'ann', reason: 'launch week' });
    now += 1_000;
    await admin.setLimit(user, { scope: '*', metric: 'cost', max: 2.5, actor: 'bob', reason: 'pilot' });
    now += 1_000;
    await admin.reset(user, { metric: 'calls', actor: 'cid', reason: 'double-charged' });
    const history = await admin.history(user);
    expect(history.map(({ id, ...rest }) => (expect(typeof id).toBe('string'), rest))).toEqual([
      {
        user_id: user,
        kind: 'reset',
        scope: 'tavily',
        metric: 'calls',
        period: 'month',
        period_key: 'month:2026-11-01',
        amount: 0,
        max: null,
        until: null,
        actor: 'cid',
        reason: 'double-charged',
        at: '2026-11-15T12:00:02.000Z',
      },
      {
        user_id: user,
        kind: 'reset',
        scope: 'ai_text',
        metric: 'calls',
        period: 'month',
        period_key: 'month:2026-11-01',
        amount: 0,
        max: null,
        until: null,
        actor: 'cid',
        reason: 'double-charged',
        at: '2026-11-15T12:00:02.000Z',
      },
      {
        user_id: user,
        kind: 'override',
        scope: '*',
        metric: 'cost',
        period: 'month',
        period_key: null,
        amount: null,
        max: 2.5,
        until: null,
        actor: 'bob',
        reason: 'pilot',
        at: '2026-11-15T12:00:01.000Z',
      },
      {
        user_id: user,
        kind: 'grant',
        scope: 'ai_text',
        metric: 'calls',
        period: 'month',
        period_key: 'month:2026-11-01',
        amount: 2,
        max: null,
        until: null,
        actor: 'ann',
        reason: 'launch week',
        at: '2026-11-15T12:00:00.000Z',
      },
    ]);
    expect(await admin.history(user, { limit: 1 })).toHaveLength(1);
  });

  it('refuses changes that cannot be right, naming the field', async () => {
    const bad = async (p: Promise<unknown>) => {
      const e = (await p.then(
        () => undefined,
        (err: { getResponse?: () => unknown }) => err,
      )) as { getStatus(): number; getResponse(): { message: string } } | undefined;
      expect(e?.getStatus()).toBe(400);
      return e!.getResponse().message;
    };
    expect(await bad(admin.grant('u', { ...AI_TEXT_CALLS, amount: 0, ...note }))).toBe(
      'amount must be a positive integer of calls',
    );
    expect(await bad(admin.grant('u', { scope: '*', metric: 'cost', amount: 0.0000001, ...note }))).toBe(
      'amount must be a positive number of US dollars: amount has more than 6 decimals (got 1e-7)',
    );
    expect(await bad(admin.grant('u', { ...OPENAI_CALLS, amount: 1, ...note }))).toBe(
      "the user's plan has no calls limit for openai per month; its limits: calls for ai_text per month; calls for tavily per month; cost for * per month",
    );
    expect(await bad(admin.grant('u', { ...AI_TEXT_CALLS, amount: 1, actor: 'a', reason: ' ' }))).toBe(
      'reason must be a non-empty string of at most 1000 characters (it is kept in the history)',
    );
    expect(await bad(admin.setLimit('u', { ...AI_TEXT_CALLS, max: 9, until: '2020-01-01', ...note }))).toBe(
      'until must be in the future',
    );
    expect(
      await bad(admin.setLimit('u', { ...AI_TEXT_CALLS, metric: 'bytes' as never, max: 9, ...note })),
    ).toBe('metric must be one of calls, tokens, cost');
    expect(await bad(admin.reset('u', { scope: 'openai', ...note }))).toBe(
      "the user's plan has no limit matching for openai; its limits: calls for ai_text per month; calls for tavily per month; cost for * per month",
    );
    expect(await bad(admin.history('', {}))).toBe(
      'the user id must be a non-empty string of at most 1024 characters',
    );
    expect(await admin.history('u')).toEqual([]);
  });

  describe('over HTTP (adminController)', () => {
    const http = () => request(t.url);
    const asAdmin = (r: request.Test) =>
      r.set('x-admin-key', 'let-me-in').set('authorization', bearer('ops-admin'));

    it("answers 403 when the host's guard does not pass, and changes nothing", async () => {
      const res = await http()
        .post('/usage/admin/users/mallory/grants')
        .set('authorization', bearer('mallory'))
        .send({ ...AI_TEXT_CALLS, amount: 1000, reason: 'me' });
      expect(res.status).toBe(403);
      expect(res.body).toEqual({ message: 'Forbidden resource', error: 'Forbidden', statusCode: 403 });
      expect(await admin.history('mallory')).toEqual([]);
    });

    it('grants, resets and sets limits, recording the principal as the actor', async () => {
      const user = 'over-http';
      const grant = await asAdmin(http().post(`/usage/admin/users/${user}/grants`)).send({
        ...AI_TEXT_CALLS,
        amount: 3,
        reason: 'beta tester',
        actor: 'someone-else',
      });
      expect(grant.status).toBe(201);
      expect(grant.body).toMatchObject({ kind: 'grant', user_id: user, amount: 3, actor: 'ops-admin' });
      const limit = await asAdmin(http().put(`/usage/admin/users/${user}/limits`)).send({
        scope: '*',
        metric: 'cost',
        max: 0.5,
        until: '2026-11-20T00:00:00Z',
        reason: 'trial',
      });
      expect(limit.status).toBe(200);
      expect(limit.body).toMatchObject({ kind: 'override', max: 0.5, until: '2026-11-20T00:00:00.000Z' });
      const reset = await asAdmin(http().post(`/usage/admin/users/${user}/resets`)).send({
        reason: 'new start',
      });
      expect(reset.status).toBe(201);
      expect(reset.body.map((a: { scope: string }) => a.scope)).toEqual(['ai_text', 'tavily', '*']);
      const view = await asAdmin(http().get(`/usage/admin/users/${user}`));
      expect(view.status).toBe(200);
      expect(view.body.user_id).toBe(user);
      expect(view.body.overrides).toEqual([
        {
          scope: '*',
          metric: 'cost',
          period: 'month',
          plan_max: 2,
          max: 0.5,
          until: '2026-11-20T00:00:00.000Z',
        },
      ]);
      expect(view.body.usage.limits.map((l: { limit: number }) => l.limit)).toEqual([8, 3, 0.5]);
      expect(view.body.adjustments).toHaveLength(5);
      const cleared = await asAdmin(http().put(`/usage/admin/users/${user}/limits`)).send({
        scope: '*',
        metric: 'cost',
        max: null,
        reason: 'trial over',
      });
      expect(cleared.body).toMatchObject({ kind: 'override_cleared', max: null });
      const history = await asAdmin(http().get(`/usage/admin/users/${user}/adjustments?limit=2`));
      expect(history.body.map((a: { kind: string }) => a.kind)).toEqual(['override_cleared', 'reset']);
    });

    it('sends parked alerts again: 0 without webhooks; a user_id that is not a string is a 400', async () => {
      const res = await asAdmin(http().post('/usage/admin/alerts/resend')).send({});
      expect([res.status, res.body]).toEqual([200, { resent: 0 }]);
      const bad = await asAdmin(http().post('/usage/admin/alerts/resend')).send({ user_id: 5 });
      expect([bad.status, bad.body.message]).toEqual([400, 'user_id must be a string']);
      expect((await http().post('/usage/admin/alerts/resend').send({})).status).toBe(403);
    });

    it('answers 400 with the reason for a change that cannot be right', async () => {
      const res = await asAdmin(http().post('/usage/admin/users/x/grants')).send({
        ...AI_TEXT_CALLS,
        amount: -3,
        reason: 'oops',
      });
      expect(res.status).toBe(400);
      expect(res.body).toEqual({
        error: 'Invalid adjustment',
        message: 'amount must be a positive integer of calls',
      });
    });

    it('answers 403 when the request has no principal to record', async () => {
      const res = await http()
        .post('/usage/admin/users/x/grants')
        .set('x-admin-key', 'let-me-in')
        .send({ ...AI_TEXT_CALLS, amount: 3, reason: 'no one' });
      expect(res.status).toBe(403);
      expect(res.body.message).toBe(
        'the admin API records who made each change: the request has no authenticated principal',
      );
    });
  });
});

describeStore('admin API after a restart', () => {
  it('grants, resets and overrides stay in force', async () => {
    const dataDir = tempDataDir();
    const schema = STORE === 'postgres' ? await createSchema() : undefined;
    const start = () =>
      createTestApp({
        usage: { clock: () => NOV_15_NOON, storage: schema ? undefined : { dataDir } },
        schema,
      });
    const user = 'plan=hundred;durable';
    const wave = (x: TestApp, n: number) =>
      Promise.all(
        Array.from({ length: n }, () =>
          request(x.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat),
        ),
      ).then((all) => all.filter((r) => r.status === 200).length);
    let t = await start();
    try {
      const admin = t.app.get(UsageAdminService);
      await admin.grant(user, { ...OPENAI_CALLS, amount: 2, ...note });
      await admin.setLimit(user, { ...OPENAI_CALLS, max: 10, ...note });
      expect(await wave(t, 5)).toBe(5);
      await admin.reset(user, { ...OPENAI_CALLS, ...note });
      await t.close();
      t = await start();
      // 10 (the override) + 2 (the grant); the 5 used before the reset no longer count.
      expect(await wave(t, 20)).toBe(12);
      expect((await t.app.get(UsageAdminService).history(user)).map((a) => a.kind)).toEqual([
        'reset',
        'override',
        'grant',
      ]);
    } finally {
      await t.close();
      rmSync(dataDir, { recursive: true, force: true });
      if (schema) await dropSchema(schema);
    }
  });
});

describe('admin controller options', () => {
  it('refuses to start without a guard of the host', () => {
    const build = (guards: unknown[]) => () =>
      UsageMonitoringModule.forRoot({
        plans: TEST_PLANS,
        adminController: { guards: guards as never },
      });
    const message =
      'UsageMonitoringModule: adminController.guards must list at least one guard of yours that lets only admins through (the admin API changes what users may spend)';
    expect(build([])).toThrow(message);
    expect(build([undefined])).toThrow(message);
    expect(() =>
      UsageMonitoringModule.forRootAsync({
        useFactory: () => ({ plans: TEST_PLANS }),
        adminController: {} as never,
      }),
    ).toThrow(message);
  });
});

describePostgres('admin API across instances of the shared store', () => {
  it('a grant is in force on every instance at once; an override once the notification arrives', async () => {
    const a = await createTestApp({ usage: { enforcementTimeoutMs: 5_000 } });
    const b = await createTestApp({ schema: a.schema, usage: { enforcementTimeoutMs: 5_000 } });
    try {
      const user = 'plan=hundred;two-instances';
      const on = (x: TestApp) =>
        request(x.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(chat);
      const waveOn = async (x: TestApp, n: number) =>
        (await Promise.all(Array.from({ length: n }, () => on(x)))).filter((r) => r.status === 200).length;
      expect((await waveOn(a, 60)) + (await waveOn(b, 60))).toBe(100);
      await a.app.get(UsageAdminService).grant(user, { ...OPENAI_CALLS, amount: 10, ...note });
      expect(await waveOn(b, 30)).toBe(10);
      await a.app.get(UsageAdminService).setLimit(user, { ...OPENAI_CALLS, max: 115, ...note });
      // B learns of the override by notification: within a second here.
      const until = Date.now() + 2_000;
      let admitted = 0;
      while (admitted === 0 && Date.now() < until) {
        admitted = (await on(b)).status === 200 ? 1 : 0;
        if (!admitted) await new Promise((r) => setTimeout(r, 20));
      }
      expect(admitted).toBe(1);
      // 115 + the grant's 10, of which 111 are used.
      expect((await waveOn(b, 20)) + (await waveOn(a, 20))).toBe(14);
    } finally {
      await b.close();
      await a.close();
    }
  });
});
