// Smoke test of a consumer app that installed the packed nestjs-usage-monitoring. Run from the app's
// folder after `npm run build`, so that `sqlite3` and `pg` resolve from the app's own node_modules:
//
//   node smoke.mjs run <express|fastify> <sqlite|postgres>
//   node smoke.mjs burst <express|fastify> [sqlite|postgres]
//   node smoke.mjs missing-driver sqlite3
//
// `run` starts a fake OpenAI upstream on 127.0.0.1 and the app against it, calls the app's
// POST /v1/chat/completions (whose handler calls the official `openai` SDK) for a user whose plan allows
// 5 calls a month, and checks: 5 × 200, then the documented 429 body and headers without a sixth
// upstream call; a grant of 2 more calls through the admin API (403 for a non-admin), then who is spending
// (top by calls, users at 100 %) and the dashboard (the user's page, the operator's); the same plan through
// POST /v1/summaries (UsageMeter.run in a service); GET /health/usage;
// the metrics the library recorded into the app's globally registered OpenTelemetry SDK (Prometheus);
// after a graceful stop, one ledger row per call with the upstream's token counts. `burst` sends 200 users' first
// requests at once (per-user SQLite, the default options): every one 200, one file each; with `postgres`, 1,000
// users' on a cold instance of the shared store: every one 200, one ledger row each. `missing-driver`
// checks that start-up fails, naming the package to install.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

const require = createRequire(join(process.cwd(), 'package.json'));
const PG_URL = process.env.SMOKE_PG_URL ?? 'postgres://postgres@127.0.0.1:5432';
const USAGE = { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 };

const [mode, ...args] = process.argv.slice(2);
const name = `${basename(process.cwd())}: ${mode} ${args.join(' ')}`;
try {
  if (mode === 'run') await run(args[0], args[1]);
  else if (mode === 'burst') await burst(args[0], args[1] ?? 'sqlite');
  else if (mode === 'missing-driver') await missingDriver(args[0]);
  else throw new Error(`unknown mode ${mode}`);
  console.log(`ok   ${name}`);
} catch (e) {
  console.error(`FAIL ${name}\n${e?.stack ?? e}`);
  process.exit(1);
}

async function run(adapter, storage) {
  assert.ok(['express', 'fastify'].includes(adapter), `adapter: ${adapter}`);
  const upstream = await fakeOpenAi();
  const db = storage === 'postgres' ? await freshDatabase() : undefined;
  const dataDir = mkdtempSync(join(tmpdir(), 'usage-smoke-'));
  const metricsPort = await freePort();
  const env = {
    HTTP_ADAPTER: adapter,
    OPENAI_BASE_URL: `${upstream.url}/v1`,
    METRICS_PORT: String(metricsPort),
    ...(db ? { USAGE_DATABASE_URL: db.url } : { USAGE_DATA_DIR: dataDir }),
  };
  const app = await startApp(env);
  try {
    const user = `smoke-${adapter}`;
    const chat = () =>
      fetch(`${app.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${user}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'gpt-4o-mini',
          messages: [{ role: 'user', content: 'Say hi' }],
          max_tokens: 16,
        }),
      });

    for (let i = 1; i <= 5; i++) {
      const res = await chat();
      assert.equal(res.status, 200, `call ${i}: ${await res.clone().text()}`);
      const body = await res.json();
      assert.equal(body.object, 'chat.completion');
      assert.deepEqual(body.usage, USAGE);
    }

    const refused = await chat();
    assert.equal(refused.status, 429);
    const now = Date.now();
    const d = new Date(now);
    const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
    const end = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
    const resetAt = new Date(end).toISOString();
    assert.deepEqual(await refused.json(), {
      error: 'Usage limit exceeded',
      message: `Monthly calls limit for openai reached (5 of 5 used). It resets at ${resetAt}.`,
      code: 'USAGE_LIMIT_CALLS',
      provider: 'openai',
      usage_info: {
        metric: 'calls',
        scope: 'openai',
        period: 'month',
        current: 5,
        limit: 5,
        percentage: 100,
        reset_at: resetAt,
      },
    });
    const h = (n) => refused.headers.get(n);
    const retryAfter = Number(h('retry-after'));
    assert.ok(Math.abs(retryAfter - (end - now) / 1000) < 5, `Retry-After ${retryAfter}`);
    assert.equal(h('ratelimit-policy'), `"openai:calls:month";q=5;w=${(end - start) / 1000}`);
    assert.equal(h('ratelimit'), `"openai:calls:month";r=0;t=${retryAfter}`);
    assert.equal(h('x-ratelimit-limit'), '5');
    assert.equal(h('x-ratelimit-remaining'), '0');
    assert.equal(h('x-ratelimit-reset'), String(retryAfter));
    assert.equal(h('x-should-retry'), retryAfter > 60 ? 'false' : null);
    assert.equal(upstream.calls(), 5, 'the refused call must not reach the upstream');

    // The admin API (adminController, behind the app's AdminGuard): the user is not an admin (403); the
    // admin grants 2 more calls this month: exactly 2 more pass, then 429 again.
    const grant = (as) =>
      fetch(`${app.url}/usage/admin/users/${user}/grants`, {
        method: 'POST',
        headers: { authorization: `Bearer ${as}`, 'content-type': 'application/json' },
        body: JSON.stringify({ scope: 'openai', metric: 'calls', amount: 2, reason: 'smoke test' }),
      });
    assert.equal((await grant(user)).status, 403);
    const granted = await grant('admin@example.com');
    assert.equal(granted.status, 201, await granted.clone().text());
    const change = await granted.json();
    assert.deepEqual(
      [change.kind, change.user_id, change.amount, change.actor, change.reason],
      ['grant', user, 2, 'admin@example.com', 'smoke test'],
    );
    assert.deepEqual([(await chat()).status, (await chat()).status, (await chat()).status], [200, 200, 429]);
    assert.equal(upstream.calls(), 7, 'the granted calls reach the upstream, the refused one does not');

    // The same plan through UsageMeter.run inside a service (an app-shaped route, no guard): 5 × 200, then
    // the 429 with the same body and headers, the upstream not called a sixth time.
    const summarizer = `smoke-meter-${adapter}`;
    const summarize = () =>
      fetch(`${app.url}/v1/summaries`, {
        method: 'POST',
        headers: { authorization: `Bearer ${summarizer}`, 'content-type': 'application/json' },
        body: JSON.stringify({ text: 'Metering in services' }),
      });
    for (let i = 1; i <= 5; i++) {
      const res = await summarize();
      assert.equal(res.status, 200, `summary ${i}: ${await res.clone().text()}`);
      assert.deepEqual(await res.json(), { summary: 'Hi!' });
    }
    const refusedSummary = await summarize();
    assert.equal(refusedSummary.status, 429);
    assert.equal((await refusedSummary.json()).code, 'USAGE_LIMIT_CALLS');
    assert.equal(refusedSummary.headers.get('x-ratelimit-remaining'), '0');
    const summaryReset = Number(/^"openai:calls:month";r=0;t=(\d+)$/.exec(refusedSummary.headers.get('ratelimit'))?.[1]);
    assert.ok(Math.abs(summaryReset - retryAfter) <= 2, `RateLimit of the refused summary: t=${summaryReset}`);
    assert.equal(upstream.calls(), 12, 'the refused summary must not reach the upstream');

    // Who is spending (admin API): by calls this month, the chat user (7) then the summarizer (5); both at
    // 100 % of their calls limit (the chat user's as granted: 7 of 7).
    const asAdmin = { authorization: 'Bearer admin@example.com' };
    const top = await (await fetch(`${app.url}/usage/admin/top?by=calls`, { headers: asAdmin })).json();
    assert.deepEqual(
      top.map((t) => [t.user_id, t.calls]),
      [
        [user, 7],
        [summarizer, 5],
      ],
    );
    const over = await (await fetch(`${app.url}/usage/admin/users?over=1`, { headers: asAdmin })).json();
    assert.deepEqual(
      over.map((u) => [u.user_id, u.share, u.limits.map((l) => `${l.metric}:${l.used}/${l.max}`)]),
      [
        [user, 1, ['calls:7/7']],
        [summarizer, 1, ['calls:5/5']],
      ].sort((a, b) => (a[0] < b[0] ? -1 : 1)),
    );
    assert.equal((await fetch(`${app.url}/usage/admin/top`, { headers: { authorization: `Bearer ${user}` } })).status, 403);

    // The dashboard: the user's own page (HTML under a CSP, their 7 of 7), nothing for an anonymous
    // visitor, and the operator's page for the admin, with the user among the top spenders.
    const mine = await fetch(`${app.url}/usage/dashboard`, { headers: { authorization: `Bearer ${user}` } });
    assert.equal(mine.status, 200);
    assert.equal(mine.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.match(mine.headers.get('content-security-policy'), /^default-src 'none'; style-src 'nonce-/);
    const minePage = await mine.text();
    assert.ok(minePage.includes(`Signed in as ${user}`) && minePage.includes('7 of 7 used (100 %)'), minePage);
    assert.equal((await fetch(`${app.url}/usage/dashboard`)).status, 403);
    const operator = await fetch(`${app.url}/usage/dashboard/admin`, { headers: asAdmin });
    assert.equal(operator.status, 200);
    assert.ok((await operator.text()).includes(`<a href="admin/users/${encodeURIComponent(user)}">${user}</a>`));

    const health = await fetch(`${app.url}/health/usage`);
    assert.equal(health.status, 200);
    const stats = await health.json();
    assert.equal(stats.status, 'ok');
    assert.deepEqual(stats.details, { usage_store: { status: 'up' } });
    assert.equal(stats.usage.status, 'healthy');
    assert.equal(stats.usage.recent_requests, 15);
    assert.equal(stats.usage.recent_errors, 0);

    // Metrics: the app registered the OpenTelemetry SDK globally (Prometheus exporter on METRICS_PORT); the
    // library recorded into it without being told: 12 admitted, 3 refused, and the upstream's tokens.
    const scraped = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const sample = (name, labels) => {
      const line = scraped
        .split('\n')
        .find((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)));
      return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    const decision = (d, code) =>
      sample('usage_monitoring_decisions_total', [
        `usage_monitoring_decision="${d}"`,
        'usage_monitoring_provider="openai"',
        `usage_monitoring_code="${code}"`,
      ]);
    assert.equal(decision('admitted', 'ok'), 12, scraped);
    assert.equal(decision('refused', 'USAGE_LIMIT_CALLS'), 3, scraped);
    const tokens = (type) => [
      'gen_ai_operation_name="chat"',
      'gen_ai_provider_name="openai"',
      `gen_ai_token_type="${type}"`,
      'gen_ai_request_model="gpt-4o-mini"',
    ];
    assert.equal(sample('gen_ai_client_token_usage_count', tokens('input')), 12, scraped);
    assert.equal(sample('gen_ai_client_token_usage_sum', tokens('input')), 12 * USAGE.prompt_tokens);
    assert.equal(sample('gen_ai_client_token_usage_sum', tokens('output')), 12 * USAGE.completion_tokens);

    // Nest's shutdown hooks run on SIGTERM, then re-raise it: the process ends by that signal.
    assert.ok(['0', 'SIGTERM'].includes(String(await app.stop())), 'graceful stop');
    const rows = db ? await db.rows() : await sqliteRows(dataDir);
    const expected = (endpoint, length) =>
      Array.from({ length }, () => ({
        provider: 'openai',
        model: 'gpt-4o-mini',
        endpoint,
        status_code: 200,
        input_tokens: 11,
        output_tokens: 7,
        estimated: false,
        outcome: 'ok',
      }));
    const clean = (r) => ({ ...r, estimated: Boolean(r.estimated) });
    assert.deepEqual(
      rows.filter((r) => r.endpoint !== 'meter:openai').map(clean),
      expected('/v1/chat/completions', 7),
    );
    assert.deepEqual(rows.filter((r) => r.endpoint === 'meter:openai').map(clean), expected('meter:openai', 5));
  } finally {
    await app.stop();
    upstream.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function burst(adapter, storage) {
  const upstream = await fakeOpenAi();
  const db = storage === 'postgres' ? await freshDatabase() : undefined;
  const dataDir = mkdtempSync(join(tmpdir(), 'usage-smoke-'));
  const app = await startApp({
    HTTP_ADAPTER: adapter,
    OPENAI_BASE_URL: `${upstream.url}/v1`,
    METRICS_PORT: String(await freePort()),
    ...(db ? { USAGE_DATABASE_URL: db.url } : { USAGE_DATA_DIR: dataDir }),
  });
  // SQLite: each new user's file is created and opened in turn; the last ones wait far past the 250 ms
  // enforcement timeout, within the open timeout. PostgreSQL: a cold instance's first requests wait in line
  // behind the statements taking each user's first quota, within the queue timeout.
  const n = db ? 1000 : 200;
  try {
    const users = Array.from({ length: n }, (_, i) => `burst-${adapter}-${i}`);
    const statuses = await Promise.all(
      users.map((user) =>
        fetch(`${app.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${user}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hi' }] }),
        }).then((r) => r.status),
      ),
    );
    assert.deepEqual(statuses.filter((s) => s !== 200), [], 'every first request is admitted');
    assert.equal(upstream.calls(), n);
    assert.ok(['0', 'SIGTERM'].includes(String(await app.stop())), 'graceful stop');
    if (db) {
      assert.equal((await db.rows()).length, n, 'one ledger row per user');
    } else {
      const files = readdirSync(dataDir).filter((f) => f.endsWith('.sqlite') && !f.startsWith('.'));
      assert.equal(files.length, n, 'one file per user');
    }
  } finally {
    await app.stop();
    upstream.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function missingDriver(driver) {
  assert.throws(() => require.resolve(driver), `${driver} must not be installed for this check`);
  const dataDir = mkdtempSync(join(tmpdir(), 'usage-smoke-'));
  try {
    const { code, output } = await runToExit({ USAGE_DATA_DIR: dataDir });
    assert.notEqual(code, 0, `start-up must fail without ${driver}:\n${output}`);
    assert.ok(!output.includes('LISTENING'), output);
    assert.ok(
      output.includes(`storage.driver '${driver}'`) && output.includes(`npm install ${driver}`),
      `the error names the option and the package:\n${output}`,
    );
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** A port nothing listens on now (the app's Prometheus exporter takes it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function fakeOpenAi() {
  let calls = 0;
  const server = createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => (raw += c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
        res.writeHead(404).end();
        return;
      }
      calls++;
      const { model } = JSON.parse(raw);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: `chatcmpl-smoke-${calls}`,
          object: 'chat.completion',
          created: Math.floor(Date.now() / 1000),
          model,
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: 'Hi!' },
              finish_reason: 'stop',
              logprobs: null,
            },
          ],
          usage: USAGE,
        }),
      );
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        calls: () => calls,
        close: () => server.close(),
      }),
    ),
  );
}

function spawnApp(env) {
  return spawn(process.execPath, ['dist/main.js'], {
    env: { ...process.env, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function runToExit(env) {
  const child = spawnApp(env);
  let output = '';
  child.stdout.on('data', (c) => (output += c));
  child.stderr.on('data', (c) => (output += c));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve) =>
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    }),
  );
}

function startApp(env) {
  const child = spawnApp(env);
  let output = '';
  let exited;
  const exit = new Promise((resolve) =>
    child.on('exit', (code, signal) => resolve((exited = code ?? signal))),
  );
  const stop = () => {
    if (exited === undefined) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      void exit.then(() => clearTimeout(timer));
    }
    return exit;
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the app did not start within 30 s:\n${output}`));
    }, 30_000);
    const onData = (chunk) => {
      output += chunk;
      const port = /LISTENING (\d+)/.exec(output)?.[1];
      if (port) {
        clearTimeout(timer);
        resolve({ url: `http://127.0.0.1:${port}`, stop });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    void exit.then((code) => {
      clearTimeout(timer);
      reject(new Error(`the app exited (${code}) before listening:\n${output}`));
    });
  });
}

async function freshDatabase() {
  const { Client } = require('pg');
  const name = `usage_smoke_${process.pid}_${Date.now()}`;
  const admin = async (sql) => {
    const client = new Client({ connectionString: `${PG_URL}/postgres` });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  const url = `${PG_URL}/${name}`;
  return {
    url,
    async rows() {
      const client = new Client({ connectionString: url });
      await client.connect();
      try {
        const { rows } = await client.query(
          `SELECT provider, model, endpoint, status_code, input_tokens::int AS input_tokens,
                  output_tokens::int AS output_tokens, estimated, outcome
             FROM usage_events ORDER BY occurred_at`,
        );
        return rows;
      } finally {
        await client.end();
      }
    },
    drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}

async function sqliteRows(dataDir) {
  const files = readdirSync(dataDir).filter((f) => f.endsWith('.sqlite') && !f.startsWith('.'));
  assert.equal(files.length, 2, `one file per user: ${files}`);
  const sqlite3 = require('sqlite3');
  const rows = [];
  for (const file of files) {
    const db = new sqlite3.Database(join(dataDir, file), sqlite3.OPEN_READONLY);
    try {
      rows.push(
        ...(await new Promise((resolve, reject) =>
          db.all(
            `SELECT provider, model, endpoint, status_code, input_tokens, output_tokens, estimated, outcome
               FROM usage_events ORDER BY occurred_at`,
            (e, r) => (e ? reject(e) : resolve(r)),
          ),
        )),
      );
    } finally {
      db.close();
    }
  }
  return rows;
}
