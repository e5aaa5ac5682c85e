/**
 * `npm run bench [-- --quick] [-- --json FILE]`: every server in its own process on 127.0.0.1, load from
 * autocannon (50 connections) in this one, each mode measured in every round next to its baselines.
 * Prints one table; exits non-zero only on errors, never on a slow figure.
 */
import autocannon from 'autocannon';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { spawnServer } from '../test/utils/spawn-server';
import { prefillLedger } from './prefill';

const args = process.argv.slice(2);
const QUICK = args.includes('--quick');
const jsonAt = args.indexOf('--json');
const JSON_FILE = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
const ONLY = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : undefined;
const DURATION = QUICK ? 3 : 8;
const ROUNDS = QUICK ? 2 : 3;
const CONNECTIONS = 50;
const CLK_TCK = 100;

interface Server {
  name: string;
  url: string;
  child: ChildProcess;
}

interface Measure {
  reqPerSec: number;
  p50Ms: number;
  p99Ms: number;
  cpuUsPerReq: number;
  errors: number;
  maxFds: number;
}

interface Case {
  /** Row label. */
  mode: string;
  adapter: string;
  users: number;
  servers: string[];
  path: '/openai/v1/chat/completions' | '/hello';
  bare: string;
  noop: string;
}

export interface Row {
  mode: string;
  adapter: string;
  users: number;
  reqPerSec: number;
  p50Ms: number;
  p99Ms: number;
  cpuUsPerReq: number;
  ratioToBare: number;
  ratioToNoop: number;
  maxFds?: number;
  errors: number;
}

const BODY = JSON.stringify({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Say hello to the benchmark' }],
  max_tokens: 16,
});

async function startServer(name: string, env: Record<string, string>): Promise<Server> {
  const s = await spawnServer(env, 60_000, join(__dirname, 'bench-server.ts'));
  return { name, url: s.url, child: s.child };
}

function cpuTicks(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

/** Open file descriptors of a process that point at SQLite files (database, WAL, shared memory). */
function fdCount(pid: number): number {
  let n = 0;
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (/\.sqlite(-wal|-shm)?$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`))) n++;
      } catch {
        /* closed meanwhile */
      }
    }
  } catch {
    return 0;
  }
  return n;
}

async function load(servers: Server[], path: string, users: number, duration: number): Promise<Measure> {
  const pids = servers.map((s) => s.child.pid!);
  const before = pids.map(cpuTicks);
  let maxFds = 0;
  const sampler = setInterval(() => {
    for (const pid of pids) maxFds = Math.max(maxFds, fdCount(pid));
  }, 200);
  const per = Math.max(1, Math.floor(CONNECTIONS / servers.length));
  let next = 0;
  const results = await Promise.all(
    servers.map((s) =>
      autocannon({
        url: s.url,
        connections: per,
        duration,
        requests: [
          {
            method: path === '/hello' ? 'GET' : 'POST',
            path,
            headers: { 'content-type': 'application/json' },
            body: path === '/hello' ? undefined : BODY,
            setupRequest: (req: autocannon.Request) => {
              const user = `bench-user-${next++ % users}`;
              return { ...req, headers: { ...req.headers, authorization: `Bearer ${user}` } };
            },
          },
        ],
      }),
    ),
  );
  clearInterval(sampler);
  const after = pids.map(cpuTicks);
  const total = results.reduce((n, r) => n + r.requests.total, 0);
  const ticks = after.reduce((n, a, i) => n + a - before[i], 0);
  const errors = results.reduce((n, r) => n + r.errors + r.timeouts + r.non2xx, 0);
  return {
    reqPerSec: results.reduce((n, r) => n + r.requests.average, 0),
    p50Ms: Math.max(...results.map((r) => r.latency.p50)),
    p99Ms: Math.max(...results.map((r) => r.latency.p99)),
    cpuUsPerReq: total ? (ticks * (1e6 / CLK_TCK)) / total : 0,
    errors,
    maxFds,
  };
}

/** Sends one request per user so every user's database exists before timing starts. */
async function touchUsers(s: Server, users: number): Promise<void> {
  if (users <= 1) return;
  let next = 0;
  await autocannon({
    url: s.url,
    connections: 20,
    amount: users,
    requests: [
      {
        method: 'POST',
        path: '/openai/v1/chat/completions',
        headers: { 'content-type': 'application/json' },
        body: BODY,
        setupRequest: (req: autocannon.Request) => ({
          ...req,
          headers: { ...req.headers, authorization: `Bearer bench-user-${next++ % users}` },
        }),
      },
    ],
  });
}

async function pgSchema(): Promise<string | undefined> {
  const c = new Client({
    host: '127.0.0.1',
    port: 5432,
    user: 'postgres',
    database: 'test',
    connectionTimeoutMillis: 1500,
  });
  try {
    await c.connect();
    const schema = `usage_bench_${process.pid}`;
    await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await c.query(`CREATE SCHEMA ${schema}`);
    return schema;
  } catch {
    return undefined;
  } finally {
    await c.end().catch(() => undefined);
  }
}

async function dropPgSchema(schema: string): Promise<void> {
  const c = new Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' });
  await c.connect();
  await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await c.end();
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'usage-bench-'));
  const servers = new Map<string, Server>();
  const start = async (name: string, env: Record<string, string>) =>
    servers.set(name, await startServer(name, env));
  const schema = await pgSchema();
  const cases: Case[] = [];
  const want = (mode: string) => !ONLY || ONLY.some((o) => mode.includes(o));
  try {
    // Express baselines and the modes compared with them.
    await start('bare', { BENCH_MODE: 'bare' });
    await start('noop', { BENCH_MODE: 'noop' });
    await start('noop-global', { BENCH_MODE: 'noop-global' });
    const chat = '/openai/v1/chat/completions' as const;
    const e = { adapter: 'express', users: 1, path: chat, bare: 'bare', noop: 'noop' };
    cases.push(
      { ...e, mode: 'bare', servers: ['bare'] },
      { ...e, mode: 'noop guard+interceptor', servers: ['noop'] },
    );
    if (want('throttler')) {
      await start('throttler', { BENCH_MODE: 'throttler' });
      cases.push({ ...e, mode: '@nestjs/throttler ttl 1 s', servers: ['throttler'] });
    }
    if (want('unmetered')) {
      await start('unmetered-controller', {
        BENCH_MODE: 'unmetered-controller',
        BENCH_DATA_DIR: join(tmp, 'uc'),
      });
      await start('unmetered-global', { BENCH_MODE: 'unmetered-global', BENCH_DATA_DIR: join(tmp, 'ug') });
      const h = { ...e, path: '/hello' as const };
      cases.push(
        { ...h, mode: 'bare (GET /hello)', servers: ['bare'] },
        { ...h, mode: 'unmetered, bound on metered controllers', servers: ['unmetered-controller'] },
        { ...h, mode: 'noop bound globally (GET /hello)', servers: ['noop-global'], noop: 'noop-global' },
        { ...h, mode: 'unmetered, bound globally', servers: ['unmetered-global'], noop: 'noop-global' },
      );
    }
    if (want('metered')) {
      await start('sqlite', { BENCH_MODE: 'metered', BENCH_DATA_DIR: join(tmp, 'sqlite') });
      cases.push({ ...e, mode: 'metered', adapter: 'express, sqlite3', servers: ['sqlite'] });
      if (ONLY?.includes('null')) {
        await start('null', { BENCH_MODE: 'metered', BENCH_STORE: 'null' });
        cases.push({
          ...e,
          mode: 'metered (store that keeps nothing)',
          adapter: 'express, null store',
          servers: ['null'],
        });
      }
    }
    if (want('postgres') && schema) {
      await start('pg-a', { BENCH_MODE: 'metered', BENCH_STORE: 'postgres', BENCH_SCHEMA: schema });
      await start('pg-b', { BENCH_MODE: 'metered', BENCH_STORE: 'postgres', BENCH_SCHEMA: schema });
      cases.push(
        { ...e, mode: 'metered', adapter: 'express, postgres ×1', servers: ['pg-a'] },
        { ...e, mode: 'metered', adapter: 'express, postgres ×2 (sum)', servers: ['pg-a', 'pg-b'] },
        {
          ...e,
          mode: 'metered, 1,000 users round-robin',
          adapter: 'express, postgres ×1',
          users: 1000,
          servers: ['pg-a'],
        },
        {
          ...e,
          mode: 'metered, 1,000 users round-robin',
          adapter: 'express, postgres ×2 (sum)',
          users: 1000,
          servers: ['pg-a', 'pg-b'],
        },
      );
    }
    if (want('fastify')) {
      await start('f-bare', { BENCH_MODE: 'bare', BENCH_PLATFORM: 'fastify' });
      await start('f-noop', { BENCH_MODE: 'noop', BENCH_PLATFORM: 'fastify' });
      await start('f-sqlite', {
        BENCH_MODE: 'metered',
        BENCH_PLATFORM: 'fastify',
        BENCH_DATA_DIR: join(tmp, 'f-sqlite'),
      });
      const f = { ...e, adapter: 'fastify', bare: 'f-bare', noop: 'f-noop' };
      cases.push(
        { ...f, mode: 'bare', servers: ['f-bare'] },
        { ...f, mode: 'noop guard+interceptor', servers: ['f-noop'] },
        { ...f, mode: 'metered', adapter: 'fastify, sqlite3', servers: ['f-sqlite'] },
      );
    }
    if (want('users')) {
      await start('u1000', {
        BENCH_MODE: 'metered',
        BENCH_DATA_DIR: join(tmp, 'u1000'),
        BENCH_MAX_OPEN: '1024',
      });
      await touchUsers(servers.get('u1000')!, 1000);
      cases.push({
        ...e,
        mode: 'metered, 1,000 users round-robin (cap 1024)',
        adapter: 'express, sqlite3',
        users: 1000,
        servers: ['u1000'],
      });
      if (!QUICK) {
        await start('u10000', {
          BENCH_MODE: 'metered',
          BENCH_DATA_DIR: join(tmp, 'u10000'),
          BENCH_MAX_OPEN: '256',
        });
        await touchUsers(servers.get('u10000')!, 10_000);
        cases.push({
          ...e,
          mode: 'metered, 10,000 users round-robin (cap 256)',
          adapter: 'express, sqlite3',
          users: 10_000,
          servers: ['u10000'],
        });
      }
    }
    if (want('ledger') && !QUICK) {
      const dir = join(tmp, 'ledger');
      await prefillLedger(dir, 'bench-user-0', 1_000_000);
      await start('ledger', { BENCH_MODE: 'metered', BENCH_DATA_DIR: dir });
      cases.push({
        ...e,
        mode: 'metered, user with 1,000,000 ledger rows',
        adapter: 'express, sqlite3',
        servers: ['ledger'],
      });
    }

    // Warm every server, then measure round by round so baselines and modes share the machine's mood.
    for (const s of servers.values()) {
      await load([s], s.name.includes('unmetered') ? '/hello' : chat, 1, 1);
    }
    const samples = new Map<Case, Measure[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of cases) {
        const m = await load(
          c.servers.map((n) => servers.get(n)!),
          c.path,
          c.users,
          DURATION,
        );
        samples.set(c, [...(samples.get(c) ?? []), m]);
        process.stderr.write(
          `round ${round + 1}/${ROUNDS} ${c.mode} [${c.adapter}] ${Math.round(m.reqPerSec)} req/s\n`,
        );
      }
    }
    const avg = (c: Case) => {
      const ms = samples.get(c)!;
      return {
        reqPerSec: mean(ms.map((m) => m.reqPerSec)),
        p50Ms: mean(ms.map((m) => m.p50Ms)),
        p99Ms: mean(ms.map((m) => m.p99Ms)),
        cpuUsPerReq: mean(ms.map((m) => m.cpuUsPerReq)),
        errors: ms.reduce((n, m) => n + m.errors, 0),
        maxFds: Math.max(...ms.map((m) => m.maxFds)),
      };
    };
    const baseline = (server: string, path: string) => {
      const c = cases.find((x) => x.servers.length === 1 && x.servers[0] === server && x.path === path);
      return c ? avg(c).reqPerSec : NaN;
    };
    const rows: Row[] = cases.map((c) => {
      const a = avg(c);
      return {
        mode: c.mode,
        adapter: c.adapter,
        users: c.users,
        reqPerSec: Math.round(a.reqPerSec),
        p50Ms: a.p50Ms,
        p99Ms: a.p99Ms,
        cpuUsPerReq: Math.round(a.cpuUsPerReq),
        ratioToBare: round2(a.reqPerSec / baseline(c.bare, c.path)),
        ratioToNoop: round2(a.reqPerSec / baseline(c.noop, c.noop === 'noop-global' ? '/hello' : c.path)),
        maxFds: a.maxFds,
        errors: a.errors,
      };
    });
    printTable(rows);
    if (JSON_FILE) writeFileSync(JSON_FILE, JSON.stringify(rows, null, 2));
    const failed = rows.filter((r) => r.errors > 0);
    if (failed.length) {
      console.error(`errors in: ${failed.map((r) => `${r.mode} [${r.adapter}]`).join(', ')}`);
      process.exitCode = 1;
    }
  } finally {
    for (const s of servers.values()) s.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 1000));
    for (const s of servers.values()) s.child.kill('SIGKILL');
    if (schema) await dropPgSchema(schema).catch(() => undefined);
    rmSync(tmp, { recursive: true, force: true });
  }
}

const round2 = (n: number) => Math.round(n * 100) / 100;

function printTable(rows: Row[]): void {
  const head = [
    'mode',
    'adapter',
    'users',
    'req/s',
    'p50 ms',
    'p99 ms',
    'CPU µs/req',
    '× bare',
    '× noop',
    'max fds',
  ];
  const lines = rows.map((r) => [
    r.mode,
    r.adapter,
    String(r.users),
    String(r.reqPerSec),
    r.p50Ms.toFixed(1),
    r.p99Ms.toFixed(1),
    String(r.cpuUsPerReq),
    r.ratioToBare.toFixed(2),
    r.ratioToNoop.toFixed(2),
    String(r.maxFds ?? ''),
  ]);
  console.log(`\n| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|`);
  for (const l of lines) console.log(`| ${l.join(' | ')} |`);
  console.log(
    `\n${new Date().toISOString()} · ${ROUNDS} rounds × ${DURATION} s · ${CONNECTIONS} connections · node ${process.version}`,
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
