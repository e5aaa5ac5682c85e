import { microsToUsd } from '../pricing/money';
import type { LimitUsage } from '../usage/usage-report.interface';
import type { DashboardFormat } from './dashboard-format';
import { barChart, html, page, table, type Html } from './html';
import type { OperatorViewData, UserViewData } from './usage-dashboard.service';

const METRIC_NAMES: Record<string, string> = { calls: 'Calls', tokens: 'Tokens', cost: 'Cost' };
const PERIOD_NAMES: Record<string, string> = {
  month: 'per month',
  day: 'per day',
  hour: 'per hour',
  minute: 'per minute',
};

function limitTitle(l: { metric: string; period: string; scope: string; providers?: string[] }): string {
  const scope =
    l.scope === '*'
      ? 'all providers'
      : l.providers && (l.providers.length !== 1 || l.providers[0] !== l.scope)
        ? `${l.scope} (${l.providers.join(', ')})`
        : l.scope;
  return `${METRIC_NAMES[l.metric] ?? l.metric} ${PERIOD_NAMES[l.period] ?? l.period}: ${scope}`;
}

function limitCard(l: LimitUsage, i: number, f: DashboardFormat): Html {
  const id = `limit-${i}`;
  const max = l.limit > 0 ? l.limit : 1;
  const fig = (n: number) => f.figure(l.metric, n);
  return html`<article class="limit" id="${id}" aria-labelledby="${id}-h">
    <h3 id="${id}-h">${limitTitle(l)}</h3>
    <meter
      id="${id}-meter"
      min="0"
      max="${max}"
      value="${Math.min(l.used, max)}"
      low="${0.8 * max}"
      high="${0.9 * max}"
      optimum="0"
      aria-labelledby="${id}-h"
    >
      ${f.percentage(l.percentage)}
    </meter>
    <p class="figures">${fig(l.used)} of ${fig(l.limit)} used (${f.percentage(l.percentage)})</p>
    <dl class="stats">
      <dt>Used</dt>
      <dd data-field="used">${fig(l.used)}</dd>
      <dt>Reserved</dt>
      <dd data-field="reserved">${fig(l.reserved)}</dd>
      <dt>Remaining</dt>
      <dd data-field="remaining">${fig(l.remaining)}</dd>
      <dt>Limit</dt>
      <dd data-field="limit">${fig(l.limit)}</dd>
      <dt>Resets</dt>
      <dd data-field="reset"><time datetime="${l.reset_at}">${f.at(Date.parse(l.reset_at))}</time></dd>
    </dl>
  </article>`;
}

/** The body of a user's view (theirs, or one an operator opened). */
function userSections(d: UserViewData, f: DashboardFormat): Html {
  const { report, activity, month } = d;
  // Every day of the billing month so far, the days without requests at 0.
  const first = Math.floor(month.start / 86_400_000);
  const last = Math.floor(Math.min(d.now, month.end - 1) / 86_400_000);
  const byDay = new Map(activity.days.map((x) => [x.day, x]));
  const bars = [];
  for (let day = first; day <= last; day++) {
    const micros = byDay.get(day)?.costMicros ?? 0;
    bars.push({ label: f.dayOf(day), value: micros, shown: f.dollars(microsToUsd(micros)) });
  }
  const limits = report.limits;
  const alerts = activity.alerts.filter((a) => !a.limitId.endsWith(':shadow'));
  return html`<section aria-labelledby="limits-h">
      <h2 id="limits-h">Limits of the ${report.plan} plan</h2>
      ${
        limits.length
          ? html`<div class="limits">${limits.map((l, i) => limitCard(l, i, f))}</div>`
          : html`<p class="empty">This plan has no limits.</p>`
      }
    </section>
    <section aria-labelledby="cost-h">
      <h2 id="cost-h">Cost per day, billing month from ${f.at(month.start)}</h2>
      ${barChart({
        id: 'cost-per-day',
        title: 'Cost per day (US dollars)',
        bars,
        columns: ['Day (UTC)', 'Cost'],
      })}
    </section>
    <section aria-labelledby="recent-h">
      <h2 id="recent-h">Last ${activity.recent.length} metered requests</h2>
      ${table({
        id: 'recent-requests',
        caption: 'Latest metered requests, newest first',
        head: [
          { label: 'Time' },
          { label: 'Provider' },
          { label: 'Model' },
          { label: 'Input tokens', numeric: true },
          { label: 'Output tokens', numeric: true },
          { label: 'Cost', numeric: true },
          { label: 'Outcome' },
          { label: 'Flags' },
        ],
        rows: activity.recent.map((r) => [
          html`<time datetime="${new Date(r.occurredAt).toISOString()}">${f.at(r.occurredAt)}</time>`,
          r.provider,
          r.model ?? '—',
          f.count(r.inputTokens),
          f.count(r.outputTokens),
          f.dollars(microsToUsd(r.costMicros)),
          r.outcome,
          [
            r.estimated ? html`<span class="flag">estimated</span> ` : '',
            r.outcome === 'partial' ? html`<span class="flag">partial</span>` : '',
          ],
        ]),
        empty: 'No metered requests yet.',
      })}
    </section>
    <section aria-labelledby="alerts-h">
      <h2 id="alerts-h">Alerts</h2>
      ${table({
        id: 'alerts',
        caption: 'Limits that crossed 80, 90 or 100 %, newest first',
        head: [
          { label: 'Limit' },
          { label: 'Threshold', numeric: true },
          { label: 'Used', numeric: true },
          { label: 'Of', numeric: true },
          { label: 'Period' },
          { label: 'Time' },
        ],
        rows: alerts.map((a) => {
          const [metric, period] = a.limitId.split(':').slice(-2);
          const scope = a.limitId.split(':').slice(0, -2).join(':');
          const fig = (n: number) => (metric === 'cost' ? f.dollars(microsToUsd(n)) : f.count(n));
          const known = limits.find((l) => l.scope === scope && l.metric === metric && l.period === period);
          return [
            limitTitle(known ?? { metric, period, scope }),
            `${a.threshold} %`,
            fig(a.used),
            fig(a.max),
            a.periodKey,
            html`<time datetime="${new Date(a.createdAt).toISOString()}">${f.at(a.createdAt)}</time>`,
          ];
        }),
        empty: 'No alerts.',
      })}
    </section>`;
}

/** The signed-in user's own view. */
export function renderUserView(d: UserViewData, f: DashboardFormat, nonce: string): string {
  return page({
    lang: f.locale,
    title: 'Your usage',
    subtitle: html`Signed in as ${d.userId} · as of
      <time datetime="${new Date(d.now).toISOString()}">${f.at(d.now)}</time>`,
    nonce,
    body: userSections(d, f),
  });
}

/** A user's view as an operator opens it from the operator's view. */
export function renderUserViewForOperator(d: UserViewData, f: DashboardFormat, nonce: string): string {
  return page({
    lang: f.locale,
    title: `Usage of ${d.userId}`,
    subtitle: html`Operator view · as of
      <time datetime="${new Date(d.now).toISOString()}">${f.at(d.now)}</time> ·
      <a href="../../admin">all users</a>`,
    nonce,
    body: userSections(d, f),
  });
}

/** Link from the operator's view to a user's view (relative: works under any global prefix). */
const userLink = (userId: string) => html`<a href="admin/users/${encodeURIComponent(userId)}">${userId}</a>`;

/** The operator's view. */
export function renderOperatorView(d: OperatorViewData, f: DashboardFormat, nonce: string): string {
  const minutes = d.lastHour.map((m) => {
    let admitted = 0;
    let refused = 0;
    for (const c of m.counts) {
      if (c.decision === 'refused' || c.decision === 'unavailable') refused += c.count;
      else admitted += c.count;
    }
    return { minute: m.minute, admitted, refused };
  });
  const totals = new Map<string, { provider: string; decision: string; code: string; count: number }>();
  for (const m of d.lastHour)
    for (const c of m.counts) {
      const key = `${c.provider}\u0001${c.decision}\u0001${c.code}`;
      const t = totals.get(key);
      if (t) t.count += c.count;
      else totals.set(key, { ...c });
    }
  const rows = [...totals.values()].sort(
    (a, b) =>
      a.provider.localeCompare(b.provider) || a.decision.localeCompare(b.decision) || b.count - a.count,
  );
  const failures = Object.values(d.enforcement.failures).reduce((n, x) => n + x, 0);
  const body = html`<section aria-labelledby="health-h">
      <h2 id="health-h">Enforcement health</h2>
      <dl class="stats" id="health">
        <dt>Usage store</dt>
        <dd data-field="store" class="${d.health.up ? 'status-up' : 'status-down'}">
          ${d.health.up ? 'up' : `down (${d.health.reason ?? 'unavailable'})`}
        </dd>
        <dt>Status (last 5 minutes)</dt>
        <dd data-field="status">${d.stats.status}</dd>
        <dt>Metered requests (last 5 minutes)</dt>
        <dd data-field="recent_requests">${f.count(d.stats.recent_requests)}</dd>
        <dt>Errors (status ≥ 500)</dt>
        <dd data-field="recent_errors">${f.count(d.stats.recent_errors)}</dd>
        <dt>Error rate</dt>
        <dd data-field="error_rate">${f.percentage(d.stats.error_rate)}</dd>
        <dt>Pending writes</dt>
        <dd data-field="pending_writes">${d.pendingWrites === null ? 'n/a' : f.count(d.pendingWrites)}</dd>
        <dt>Enforcement failures (503 or fail-open)</dt>
        <dd data-field="failures">${f.count(failures)}</dd>
        <dt>Usage not recorded</dt>
        <dd data-field="tracking_failures">${f.count(d.enforcement.trackingFailures)}</dd>
      </dl>
    </section>
    <section aria-labelledby="hour-h">
      <h2 id="hour-h">Requests and refusals, last hour</h2>
      ${barChart({
        id: 'last-hour',
        title: 'Admission decisions per minute (admitted; refused or unavailable on top)',
        bars: minutes.map((m) => ({
          label: f.minuteOf(m.minute),
          value: m.admitted,
          shown: f.count(m.admitted),
        })),
        columns: ['Minute (UTC)', 'Admitted'],
        stacked: {
          name: 'Refused or unavailable',
          values: minutes.map((m) => m.refused),
          shown: minutes.map((m) => f.count(m.refused)),
        },
      })}
      ${table({
        id: 'decisions',
        caption: 'By provider, decision and code',
        head: [
          { label: 'Provider' },
          { label: 'Decision' },
          { label: 'Code' },
          { label: 'Requests', numeric: true },
        ],
        rows: rows.map((r) => [r.provider, r.decision, r.code, f.count(r.count)]),
        empty: 'No admission decisions in the last hour.',
      })}
    </section>
    <section aria-labelledby="top-h">
      <h2 id="top-h">Top users by cost, this billing month</h2>
      ${table({
        id: 'top-users',
        caption: 'The 10 users who spent the most',
        head: [
          { label: 'User' },
          { label: 'Cost', numeric: true },
          { label: 'Calls', numeric: true },
          { label: 'Tokens', numeric: true },
        ],
        rows: d.top.map((t) => [userLink(t.user_id), f.dollars(t.cost), f.count(t.calls), f.count(t.tokens)]),
        empty: 'Nobody has spent anything this month.',
      })}
    </section>
    <section aria-labelledby="over-h">
      <h2 id="over-h">Users over 80 % of a limit</h2>
      ${table({
        id: 'over-limit',
        caption: 'Highest share first (at most 50)',
        head: [{ label: 'User' }, { label: 'Highest share', numeric: true }, { label: 'Limits' }],
        rows: d.over.map((u) => [
          userLink(u.user_id),
          f.percentage(u.share * 100),
          u.limits.map(
            (l, i) =>
              html`${i ? '; ' : ''}${limitTitle(l)}${l.mode === 'shadow' ? ' (shadow)' : ''}:
              ${f.figure(l.metric, l.used)} of ${f.figure(l.metric, l.max)}`,
          ),
        ]),
        empty: 'No user is over 80 % of a limit.',
      })}
    </section>`;
  return page({
    lang: f.locale,
    title: 'Usage: operator view',
    subtitle: html`As of <time datetime="${new Date(d.now).toISOString()}">${f.at(d.now)}</time>`,
    nonce,
    body,
  });
}
