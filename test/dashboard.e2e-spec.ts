import { Injectable, UnauthorizedException, type CanActivate, type ExecutionContext } from '@nestjs/common';
import { existsSync, mkdirSync } from 'node:fs';
import { Agent } from 'node:http';
import { join } from 'node:path';
import request from 'supertest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { UsageAdminService, UsageMonitoringModule, UsageService } from '@app/usage-monitoring';
import { createTestApp, TEST_PLANS, type TestApp } from './utils/create-test-app';
import { postStatus } from './utils/post-status';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore, SQLITE_DRIVER, STORE } from './utils/test-store';
import { ADMIN_KEY, AdminKeyGuard } from './utils/admin-key.guard';

/**
 * The usage dashboard in a real browser: Debian's Chromium driven by playwright-core, headless, against
 * the app on 127.0.0.1. Locally it is skipped, with a message, when Chromium is not installed; CI
 * installs it and sets USAGE_TEST_REQUIRE_CHROMIUM=1.
 */
const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
if (!HAVE_CHROMIUM && process.env.USAGE_TEST_REQUIRE_CHROMIUM === '1')
  throw new Error(`${CHROMIUM} is missing (apt-get install chromium); USAGE_TEST_REQUIRE_CHROMIUM=1`);
if (!HAVE_CHROMIUM) process.stderr.write(`dashboard tests skipped: ${CHROMIUM} is not installed\n`);
const describeBrowser: jest.Describe = HAVE_CHROMIUM ? describeStore : describe.skip;

/** The README's screenshots: written by the SQLite run of this test. */
const SCREENSHOTS = join(__dirname, '..', 'docs');
const WRITES_SCREENSHOTS = STORE === 'sqlite' && SQLITE_DRIVER === 'sqlite3';

const ALICE = 'alice@example.com'; // the free plan: 5 AI text calls a month
const BOB = 'plan=hundred;bob';
const EVIL = '<script>alert("pwned")</script>';

/** The dashboard's guard here: a signed-in user (the test's global auth guard sets `request.user`). */
@Injectable()
class SignedInGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    if (!context.switchToHttp().getRequest<{ user?: unknown }>().user) throw new UnauthorizedException();
    return true;
  }
}

const usd = new Intl.NumberFormat('en-US', {
  style: 'currency',
  currency: 'USD',
  minimumFractionDigits: 2,
  maximumFractionDigits: 6,
});
const dayLabel = new Intl.DateTimeFormat('en-US', { month: 'short', day: 'numeric', timeZone: 'UTC' });

describeBrowser('usage dashboard in headless Chromium', () => {
  let t: TestApp;
  let now = Date.UTC(2026, 11, 1, 9, 30);
  let browser: Browser;
  const consoleErrors: string[] = [];
  const offHost: string[] = [];

  beforeAll(async () => {
    t = await createTestApp({
      usage: { clock: () => now, enforcementTimeoutMs: 5_000 },
      adminController: { guards: [AdminKeyGuard] },
      dashboard: { guards: [SignedInGuard] },
    });
    const agent = new Agent({ keepAlive: true });
    const chat = (user: string, prompt: number, completion: number, extra: object = {}) =>
      postStatus(`${t.url}/openai/v1/chat/completions`, agent, user, {
        max_tokens: 50,
        report: { prompt, completion },
        ...extra,
      });
    // December 1: Alice twice, Bob once.
    expect([await chat(ALICE, 100, 40), await chat(ALICE, 200, 80), await chat(BOB, 1_000, 500)]).toEqual([
      200, 200, 200,
    ]);
    // December 3: Alice twice more (80 %), a user whose id is markup, three times.
    now = Date.UTC(2026, 11, 3, 14, 5);
    expect([await chat(ALICE, 50, 20), await chat(ALICE, 60, 30)]).toEqual([200, 200]);
    for (let i = 0; i < 3; i++) expect(await chat(EVIL, 3_000, 1_000)).toBe(200);
    // December 5: Alice's fifth call (no usage reported: estimated), then a refusal.
    now = Date.UTC(2026, 11, 5, 16, 45);
    expect(await chat(ALICE, 0, 0, { omitUsage: true })).toBe(200);
    expect(await chat(ALICE, 10, 10)).toBe(429);
    agent.destroy();
    browser = await (
      await import('playwright-core')
    ).chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await t?.close();
  });

  /** A page in a fresh context: every request recorded, any leaving 127.0.0.1 aborted. */
  async function open(
    path: string,
    headers: Record<string, string>,
    options: { javaScriptEnabled?: boolean } = {},
  ): Promise<{ page: Page; context: BrowserContext; status: number; csp: string | undefined }> {
    const context = await browser.newContext({
      extraHTTPHeaders: { ...headers, 'accept-language': 'en-US' },
      javaScriptEnabled: options.javaScriptEnabled ?? true,
      viewport: { width: 1000, height: 900 },
    });
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(`${t.url}/`)) return route.continue();
      offHost.push(url);
      return route.abort();
    });
    const page = await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(e.message));
    page.on('dialog', (d) => {
      consoleErrors.push(`dialog: ${d.message()}`);
      void d.dismiss();
    });
    const res = await page.goto(`${t.url}${path}`);
    return { page, context, status: res!.status(), csp: res!.headers()['content-security-policy'] };
  }

  const text = (page: Page, selector: string) => page.locator(selector).innerText();
  const rows = (page: Page, selector: string) =>
    page
      .locator(`${selector} tbody tr`)
      .evaluateAll((trs) =>
        trs.map((tr) => [...tr.querySelectorAll('th, td')].map((c) => (c.textContent ?? '').trim())),
      );

  it.each([true, false])(
    "the user's view shows their exact limits and the ledger's cost per day (JavaScript %s)",
    async (javaScriptEnabled) => {
      const { page, context, status, csp } = await open(
        '/usage/dashboard',
        { authorization: bearer(ALICE) },
        {
          javaScriptEnabled,
        },
      );
      try {
        expect(status).toBe(200);
        expect(csp).toMatch(
          /^default-src 'none'; style-src 'nonce-[A-Za-z0-9+/]{24}'; img-src 'self' data:;/,
        );
        expect(csp).not.toContain('unsafe-inline');
        expect(await page.locator('script').count()).toBe(0);
        const report = await t.app.get(UsageService).getUsage(ALICE);
        expect(report.limits.map((l) => [l.scope, l.metric, l.used, l.remaining])).toEqual([
          ['ai_text', 'calls', 5, 0],
          ['tavily', 'calls', 0, 3],
          ['*', 'cost', expect.any(Number), expect.any(Number)],
        ]);
        for (const [i, l] of report.limits.entries()) {
          const fig = (n: number) => (l.metric === 'cost' ? usd.format(n) : String(n));
          expect(await text(page, `#limit-${i} [data-field=used]`)).toBe(fig(l.used));
          expect(await text(page, `#limit-${i} [data-field=remaining]`)).toBe(fig(l.remaining));
          expect(await text(page, `#limit-${i} [data-field=limit]`)).toBe(fig(l.limit));
        }
        expect(await text(page, '#limit-0 [data-field=reset] time')).toBe('Jan 1, 2027, 12:00:00 AM UTC');
        // Cost per day: the ledger's sums, every day of the month so far.
        const ledger = await queryUserDb<{ day: number; micros: number }>(
          t,
          ALICE,
          'SELECT occurred_at / 86400000 AS day, SUM(cost_micros) AS micros FROM usage_events GROUP BY occurred_at / 86400000',
        );
        const first = Date.UTC(2026, 11, 1) / 86_400_000;
        const expected = [0, 1, 2, 3, 4].map((k) => {
          const micros = ledger.find((r) => Number(r.day) === first + k)?.micros ?? 0;
          return [dayLabel.format(new Date((first + k) * 86_400_000)), usd.format(Number(micros) / 1e6)];
        });
        expect(expected.filter(([, c]) => c !== '$0.00')).toHaveLength(3); // Dec 1, 3, 5
        expect(await rows(page, '#cost-per-day-table')).toEqual(expected);
        // The chart is an image with an accessible name, and a table with the same figures.
        expect(await page.getByRole('img', { name: 'Cost per day (US dollars)' }).count()).toBe(1);
        // The last requests, newest first: the estimated one on top; alerts at 80, 90 and 100 %.
        const recent = await rows(page, '#recent-requests');
        expect(recent).toHaveLength(5);
        expect(recent[0].slice(1, 3)).toEqual(['openai', 'gpt-4o-mini']);
        expect(recent[0][7]).toBe('estimated');
        expect(recent.slice(1).map((r) => [r[3], r[4]])).toEqual([
          ['60', '30'],
          ['50', '20'],
          ['200', '80'],
          ['100', '40'],
        ]);
        const calls = await text(page, '#limit-0-h');
        expect(calls).toMatch(/^Calls per month: ai_text \(.*openai.*\)$/);
        expect((await rows(page, '#alerts')).map((r) => [r[0], r[1], r[2], r[3]])).toEqual([
          [calls, '100 %', '5', '5'],
          [calls, '90 %', '5', '5'],
          [calls, '80 %', '4', '5'],
        ]);
        // Only Alice's data.
        const all = await page.locator('body').innerText();
        expect(all).toContain(`Signed in as ${ALICE}`);
        expect(all).not.toContain('bob');
        expect(all).not.toContain('pwned');
        if (javaScriptEnabled && WRITES_SCREENSHOTS) {
          mkdirSync(SCREENSHOTS, { recursive: true });
          await page.screenshot({ path: join(SCREENSHOTS, 'dashboard-user.png'), fullPage: true });
        }
      } finally {
        await context.close();
      }
    },
  );

  it("the operator's view lists the top users in order, renders a markup user id as text, and links to each user", async () => {
    const { page, context, status } = await open('/usage/dashboard/admin', ADMIN_KEY);
    try {
      expect(status).toBe(200);
      const top = await t.app.get(UsageAdminService).top({ by: 'cost', limit: 10 });
      expect(top.map((u) => u.user_id)).toEqual([EVIL, BOB, ALICE]);
      expect((await rows(page, '#top-users')).map((r) => [r[0], r[1], r[2]])).toEqual(
        top.map((u) => [u.user_id, usd.format(u.cost), String(u.calls)]),
      );
      // The id is text: no script element, no dialog, and its link is the encoded id.
      expect(await page.locator('script').count()).toBe(0);
      const link = page.locator('#top-users a').first();
      expect(await link.innerText()).toBe(EVIL);
      expect(await link.getAttribute('href')).toBe(`admin/users/${encodeURIComponent(EVIL)}`);
      // Alice is at 100 % of her AI text calls.
      expect((await rows(page, '#over-limit')).map((r) => [r[0], r[1]])).toEqual([[ALICE, '100 %']]);
      // The last hour (December 5, 16:45): Alice's fifth call admitted and the sixth refused.
      expect(await rows(page, '#decisions')).toEqual([
        ['openai', 'admitted', 'ok', '1'],
        ['openai', 'refused', 'USAGE_LIMIT_CALLS', '1'],
      ]);
      expect(await text(page, '#health [data-field=store]')).toBe('up');
      if (WRITES_SCREENSHOTS)
        await page.screenshot({ path: join(SCREENSHOTS, 'dashboard-operator.png'), fullPage: true });
      // The link opens that user's view for the operator.
      await link.click();
      expect(page.url()).toBe(`${t.url}/usage/dashboard/admin/users/${encodeURIComponent(EVIL)}`);
      expect(await page.locator('h1').innerText()).toBe(`Usage of ${EVIL}`);
      expect(await text(page, '#limit-0 [data-field=used]')).toBe('3');
    } finally {
      await context.close();
    }
  });

  it("a user cannot open another user's view or the operator's (403), nor the dashboard without signing in (401)", async () => {
    const asAlice = { authorization: bearer(ALICE) };
    const bobs = await request(t.url)
      .get(`/usage/dashboard/admin/users/${encodeURIComponent(BOB)}`)
      .set(asAlice);
    expect(bobs.status).toBe(403);
    expect(bobs.text).not.toContain('bob');
    expect((await request(t.url).get('/usage/dashboard/admin').set(asAlice)).status).toBe(403);
    expect((await request(t.url).get('/usage/dashboard')).status).toBe(401);
  });

  it('loads without console errors or any request leaving 127.0.0.1', () => {
    expect(consoleErrors).toEqual([]);
    expect(offHost).toEqual([]);
  });
});

describeStore('usage dashboard: mounting', () => {
  it('refuses to start without a guard unless public: true', () => {
    expect(() => UsageMonitoringModule.forRoot({ plans: TEST_PLANS, dashboard: {} })).toThrow(
      "UsageMonitoringModule: dashboard.guards must list your guard that authenticates users (the dashboard shows the signed-in user's usage), or set dashboard.public: true when a global guard already does",
    );
    expect(() =>
      UsageMonitoringModule.forRoot({ plans: TEST_PLANS, dashboard: { public: true } }),
    ).not.toThrow();
  });

  it('serves the same page on Fastify, with its headers', async () => {
    const t = await createTestApp({ platform: 'fastify', dashboard: { guards: [SignedInGuard] } });
    try {
      const res = await request(t.url).get('/usage/dashboard').set('authorization', bearer('fastify-user'));
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(res.headers['content-security-policy']).toMatch(
        /^default-src 'none'; style-src 'nonce-[A-Za-z0-9+/]{24}';/,
      );
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.text).toContain('Signed in as fastify-user');
      // No operator view without the admin API's guards.
      expect((await request(t.url).get('/usage/dashboard/admin')).status).toBe(404);
    } finally {
      await t.close();
    }
  });
});
