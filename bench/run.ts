/**
 * `npm run bench [-- --quick] [-- --json FILE]`: every server in its own process on 127.0.0.1, load from
 * autocannon (50 connections) in this one, each mode measured in every round next to its baselines.
 * Prints the throughput table, then the latency of bare, no-op and the metered Express routes at one fixed
 * rate (half the no-op's saturated throughput); exits non-zero only on errors, never on a slow figure.
 */
import autocannon from 'autocannon';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BODY,
  CLK_TCK,
  chatRoundRobin,
  compile,
  cpuTicks,
  dropPgSchema,
  fixedRate,
  median,
  pgSchema,
  untilQuiet,
  startServer,
  type Latency,
  type Server,
} from './harness';
import { prefillLedger } from './prefill';
import { APPLY_MS_PER_WAITING_USER } from '@app/usage-monitoring/storage/sqlite/sqlite-batch-writer';

const args = process.argv.slice(2);
const QUICK = args.includes('--quick');
const jsonAt = args.indexOf('--json');
const JSON_FILE = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
const ONLY = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : undefined;
const DURATION = QUICK ? 1.5 : 5;
/** Seconds of load each server gets before it is measured (autocannon's `amount` ends on a 1 s tick). */
const WARM_SECONDS = QUICK ? 1 : 2;
/**
 * Seconds of the same load right before each measured window (not in `--quick`, which must stay under 2
 * minutes). A server idle for minutes, as each is between its turns, ran its first 2 s of load about a third
 * slower than the next 8 s, the no-op's and the metered route's alike (a scratch run, 2026-12-06 22:10 UTC:
 * 1,079 then about 1,570 req/s, and 997 then about 1,320), and that start was part of every 5 s window,
 * by an amount that varied from case to case. Its requests and CPU count in the CPU per request, not in req/s.
 */
const PREWARM_SECONDS = QUICK ? 0 : 2;
/**
 * How long CPU is still counted after a per-user SQLite case's load: `storage.journal.applyDelayMs` (the
 * default, 1 s) and half a second, so that the journaled rows' applies to the users' files are its own.
 */
const JOURNAL_TAIL_MS = 1000 + 500;
/**
 * The same for N users open at once: their commits are spaced 10 ms per waiting user (`ApplyPacer`), so the
 * last rows of 1,000 users reach their files up to 10 s after the load. `--quick` does not wait for them.
 */
const pacedTailMs = (users: number) =>
  QUICK ? JOURNAL_TAIL_MS : Math.max(JOURNAL_TAIL_MS, users * APPLY_MS_PER_WAITING_USER + 500);
const ROUNDS = QUICK ? 2 : 5;
const CONNECTIONS = 50;

interface Measure {
  reqPerSec: number;
  p50Ms: number;
  p99Ms: number;
  cpuUsPerReq: number;
  errors: number;
  maxFds: number;
  /** Its place in its round's order (see `nearest`). */
  at?: number;
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
  /**
   * Journal modes: after the load, wait this long before reading the CPU counters, so that the rows the
   * servers apply to users' files after the run count in its CPU (and not in the next case's time).
   */
  tailMs?: number;
  /** A server measured again, as the baseline of the cases beside it (see `measureOrder`); not a row. */
  again?: boolean;
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

/**
 * Open file descriptors of a process that point at the store's files in its data directory: SQLite files
 * (database, WAL, shared memory) and the intent log's.
 */
function fdCount(pid: number): number {
  let n = 0;
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (/\.sqlite(-wal|-shm)?$|\/\.usage-intents\.\d+\.log$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`)))
          n++;
      } catch {
        /* closed meanwhile */
      }
    }
  } catch {
    return 0;
  }
  return n;
}

async function load(
  servers: Server[],
  path: string,
  users: number,
  duration: number,
  tailMs = 0,
): Promise<Measure> {
  const pids = servers.map((s) => s.child.pid!);
  const before = pids.map((pid) => cpuTicks(pid));
  let maxFds = 0;
  const sampler = setInterval(() => {
    for (const pid of pids) maxFds = Math.max(maxFds, fdCount(pid));
  }, 200);
  const per = Math.max(1, Math.floor(CONNECTIONS / servers.length));
  let next = 0;
  const statuses: Record<string, number> = {};
  const cannon = (seconds: number) =>
    Promise.all(
      servers.map((s) =>
        autocannon({
          url: s.url,
          connections: per,
          duration: seconds,
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
              onResponse: (status: number, body: string) => {
                if (status >= 300) {
                  const key = `${status} ${body.slice(0, 120)}`;
                  statuses[key] = (statuses[key] ?? 0) + 1;
                }
              },
            },
          ],
        }),
      ),
    );
  const warmed = PREWARM_SECONDS ? await cannon(PREWARM_SECONDS) : [];
  const results = await cannon(duration);
  if (tailMs) await new Promise((resolve) => setTimeout(resolve, tailMs));
  // --quick does not wait for the 1,000 users' paced commits (below 2 minutes); they are not its figures'.
  const drainedMs = QUICK ? 0 : await untilDrained(servers);
  const quietMs = await untilQuiet(pids);
  if (process.env.BENCH_VERBOSE)
    process.stderr.write(`  drained ${drainedMs} ms, then quiet ${quietMs} ms after the load\n`);
  clearInterval(sampler);
  const after = pids.map((pid) => cpuTicks(pid));
  // CPU per request over the warm-up and the measured window: both their requests and all their work.
  const total = [...warmed, ...results].reduce((n, r) => n + r.requests.total, 0);
  const ticks = after.reduce((n, a, i) => n + a - before[i], 0);
  const errors = [...warmed, ...results].reduce((n, r) => n + r.errors + r.timeouts + r.non2xx, 0);
  if (errors) {
    const kinds = [...warmed, ...results].map(
      (r) => `errors ${r.errors}, timeouts ${r.timeouts}, non-2xx ${r.non2xx}`,
    );
    process.stderr.write(`  ${kinds.join('; ')} ${JSON.stringify(statuses)}\n`);
  }
  return {
    reqPerSec: results.reduce((n, r) => n + r.requests.average, 0),
    p50Ms: Math.max(...results.map((r) => r.latency.p50)),
    p99Ms: Math.max(...results.map((r) => r.latency.p99)),
    cpuUsPerReq: total ? (ticks * (1e6 / CLK_TCK)) / total : 0,
    errors,
    maxFds,
  };
}

const DRAIN_MAX_MS = 150_000;

/**
 * Waits (at most 150 s) until the servers' stores have no write left that is not in its final database
 * (`GET /bench/pending`): the paced commits of 10,000 users run for tens of seconds after their load (their
 * rows wait 60 s, then the applies: 73 to 87 s in run 22), and measured under the next case they slowed it
 * (1,000 users after 10,000: 2,049 and 2,047 req/s in run 11's reversed rounds, 2,536 to 3,127 in the
 * others). Their CPU is then this case's. Says so when it gives up. Resolves with the time waited.
 */
async function untilDrained(servers: Server[]): Promise<number> {
  const start = Date.now();
  for (const s of servers) {
    let pending = 0;
    while (Date.now() - start < DRAIN_MAX_MS) {
      const res = await fetch(`${s.url}/bench/pending`);
      pending = ((await res.json()) as { pending: number }).pending;
      if (pending === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (pending > 0)
      process.stderr.write(
        `  ${pending} write(s) still pending at ${s.url} after ${DRAIN_MAX_MS / 1000} s: measured under the next case\n`,
      );
  }
  return Date.now() - start;
}

/** Warms a server up (the JIT settles after a few thousand requests) before it is measured. */
async function warm(s: Server, path: string): Promise<void> {
  await autocannon({
    url: s.url,
    connections: 20,
    duration: WARM_SECONDS,
    requests: [
      {
        method: path === '/hello' ? 'GET' : 'POST',
        path,
        headers: { 'content-type': 'application/json', authorization: 'Bearer bench-user-0' },
        body: path === '/hello' ? undefined : BODY,
      },
    ],
  });
}

/** Sends one request per user so every user's database exists before timing starts. */
async function touchUsers(s: Server, users: number): Promise<void> {
  if (users <= 1) return;
  await autocannon({ url: s.url, connections: 20, amount: users, requests: [chatRoundRobin(users)] });
}

async function main(): Promise<void> {
  const began = Date.now();
  compile();
  const tmp = mkdtempSync(join(tmpdir(), 'usage-bench-'));
  const servers = new Map<string, Server>();
  // Servers start two at a time (one per core); a start is a Node process compiling and loading Nest.
  const chat = '/openai/v1/chat/completions' as const;
  const starting: Promise<unknown>[] = [];
  let slot: Promise<unknown> = Promise.resolve();
  let slot2: Promise<unknown> = Promise.resolve();
  /** Starts a server, warms it, and (`users`) creates every user's database before timing starts. */
  const start = (name: string, env: Record<string, string>, users = 1) => {
    const run = (prior: Promise<unknown>) =>
      prior.then(async () => {
        const t0 = Date.now();
        const server = await startServer(name, env);
        servers.set(name, server);
        const t1 = Date.now();
        await warm(server, name.includes('unmetered') ? '/hello' : chat);
        const t2 = Date.now();
        await touchUsers(server, users);
        if (process.env.BENCH_VERBOSE)
          process.stderr.write(
            `${name}: started ${t1 - t0} ms, warmed ${t2 - t1} ms, users ${Date.now() - t2} ms\n`,
          );
      });
    if (starting.length % 2 === 0) starting.push((slot = run(slot)));
    else starting.push((slot2 = run(slot2)));
  };
  const schema = await pgSchema();
  const cases: Case[] = [];
  const want = (mode: string) => !ONLY || ONLY.some((o) => mode.includes(o));
  try {
    // Express baselines and the modes compared with them.
    start('bare', { BENCH_MODE: 'bare' });
    start('noop', { BENCH_MODE: 'noop' });
    if (!QUICK) start('noop-global', { BENCH_MODE: 'noop-global' });
    const e = { adapter: 'express', users: 1, path: chat, bare: 'bare', noop: 'noop' };
    cases.push(
      { ...e, mode: 'bare', servers: ['bare'] },
      { ...e, mode: 'noop guard+interceptor', servers: ['noop'] },
    );
    if (want('throttler')) {
      start('throttler', { BENCH_MODE: 'throttler' });
      cases.push({ ...e, mode: '@nestjs/throttler ttl 1 s', servers: ['throttler'] });
    }
    // --quick leaves out the unmetered routes' rows and better-sqlite3 (no target names them), to stay under 2 minutes.
    if (want('unmetered') && !QUICK) {
      start('unmetered-controller', {
        BENCH_MODE: 'unmetered-controller',
        BENCH_DATA_DIR: join(tmp, 'uc'),
      });
      start('unmetered-global', { BENCH_MODE: 'unmetered-global', BENCH_DATA_DIR: join(tmp, 'ug') });
      const h = { ...e, path: '/hello' as const };
      cases.push(
        { ...h, mode: 'bare (GET /hello)', servers: ['bare'] },
        { ...h, mode: 'unmetered, bound on metered controllers', servers: ['unmetered-controller'] },
        { ...h, mode: 'noop bound globally (GET /hello)', servers: ['noop-global'], noop: 'noop-global' },
        { ...h, mode: 'unmetered, bound globally', servers: ['unmetered-global'], noop: 'noop-global' },
      );
    }
    if (want('metered')) {
      start('sqlite', { BENCH_MODE: 'metered', BENCH_DATA_DIR: join(tmp, 'sqlite') });
      start('meter-run', { BENCH_MODE: 'meter-run', BENCH_DATA_DIR: join(tmp, 'meter-run') });
      cases.push({
        ...e,
        mode: 'metered',
        adapter: 'express, sqlite3',
        servers: ['sqlite'],
        tailMs: JOURNAL_TAIL_MS,
      });
      if (!QUICK) {
        start('b3', {
          BENCH_MODE: 'metered',
          BENCH_DRIVER: 'better-sqlite3',
          BENCH_DATA_DIR: join(tmp, 'b3'),
        });
        cases.push({
          ...e,
          mode: 'metered',
          adapter: 'express, better-sqlite3',
          servers: ['b3'],
          tailMs: JOURNAL_TAIL_MS,
        });
      }
      cases.push({
        ...e,
        mode: 'meter.run in the handler',
        adapter: 'express, sqlite3',
        servers: ['meter-run'],
        tailMs: JOURNAL_TAIL_MS,
      });
      if (ONLY?.includes('null')) {
        start('null', { BENCH_MODE: 'metered', BENCH_STORE: 'null' });
        cases.push({
          ...e,
          mode: 'metered (store that keeps nothing)',
          adapter: 'express, null store',
          servers: ['null'],
        });
      }
    }
    if (want('postgres') && schema) {
      start('pg-a', { BENCH_MODE: 'metered', BENCH_STORE: 'postgres', BENCH_SCHEMA: schema });
      start('pg-b', { BENCH_MODE: 'metered', BENCH_STORE: 'postgres', BENCH_SCHEMA: schema });
      // The shared store's defaults: leases of 64 requests' worth, no durable intent.
      if (!QUICK) cases.push({ ...e, mode: 'metered', adapter: 'express, postgres ×1', servers: ['pg-a'] });
      cases.push({ ...e, mode: 'metered', adapter: 'express, postgres ×2 (sum)', servers: ['pg-a', 'pg-b'] });
      if (!QUICK) {
        cases.push(
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
    }
    if (want('fastify')) {
      start('f-bare', { BENCH_MODE: 'bare', BENCH_PLATFORM: 'fastify' });
      start('f-noop', { BENCH_MODE: 'noop', BENCH_PLATFORM: 'fastify' });
      start('f-sqlite', {
        BENCH_MODE: 'metered',
        BENCH_PLATFORM: 'fastify',
        BENCH_DATA_DIR: join(tmp, 'f-sqlite'),
      });
      const f = { ...e, adapter: 'fastify', bare: 'f-bare', noop: 'f-noop' };
      cases.push(
        { ...f, mode: 'bare', servers: ['f-bare'] },
        { ...f, mode: 'noop guard+interceptor', servers: ['f-noop'] },
        {
          ...f,
          mode: 'metered',
          adapter: 'fastify, sqlite3',
          servers: ['f-sqlite'],
          tailMs: JOURNAL_TAIL_MS,
        },
      );
      if (!QUICK) {
        start('f-b3', {
          BENCH_MODE: 'metered',
          BENCH_PLATFORM: 'fastify',
          BENCH_DRIVER: 'better-sqlite3',
          BENCH_DATA_DIR: join(tmp, 'f-b3'),
        });
        cases.push({
          ...f,
          mode: 'metered',
          adapter: 'fastify, better-sqlite3',
          servers: ['f-b3'],
          tailMs: JOURNAL_TAIL_MS,
        });
      }
    }
    if (want('users')) {
      start(
        'u1000',
        { BENCH_MODE: 'metered', BENCH_DATA_DIR: join(tmp, 'u1000'), BENCH_MAX_OPEN: '1024' },
        1000,
      );
      cases.push({
        ...e,
        mode: 'metered, 1,000 users round-robin (cap 1024)',
        adapter: 'express, sqlite3',
        users: 1000,
        servers: ['u1000'],
        tailMs: pacedTailMs(1000),
      });
      if (!QUICK) {
        start(
          'u10000',
          { BENCH_MODE: 'metered', BENCH_DATA_DIR: join(tmp, 'u10000'), BENCH_MAX_OPEN: '256' },
          10_000,
        );
        cases.push({
          ...e,
          mode: 'metered, 10,000 users round-robin (cap 256)',
          adapter: 'express, sqlite3',
          users: 10_000,
          servers: ['u10000'],
          tailMs: pacedTailMs(256),
        });
      }
    }
    if (want('ledger') && !QUICK) {
      const dir = join(tmp, 'ledger');
      await prefillLedger(dir, 'bench-user-0', 1_000_000);
      start('ledger', { BENCH_MODE: 'metered', BENCH_DATA_DIR: dir });
      cases.push({
        ...e,
        mode: 'metered, user with 1,000,000 ledger rows',
        adapter: 'express, sqlite3',
        servers: ['ledger'],
        tailMs: JOURNAL_TAIL_MS,
      });
    }

    cases.splice(0, cases.length, ...measureOrder(cases));
    await Promise.all(starting);
    const since = (t: number) => `${((Date.now() - t) / 1000).toFixed(1)} s`;
    process.stderr.write(`${servers.size} servers started, warmed and users created in ${since(began)}\n`);
    // Measure round by round so baselines and modes share the machine's mood; every other round in reverse
    // order, so that no mode is always measured long after (or before) its baselines.
    const samples = new Map<Case, Measure[]>();
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? cases : [...cases].reverse();
      for (const [at, c] of order.entries()) {
        const m = await load(
          c.servers.map((n) => servers.get(n)!),
          c.path,
          c.users,
          DURATION,
          c.tailMs,
        );
        m.at = at;
        samples.set(c, [...(samples.get(c) ?? []), m]);
        process.stderr.write(
          `round ${round + 1}/${ROUNDS} ${c.mode} [${c.adapter}] ${Math.round(m.reqPerSec)} req/s\n`,
        );
      }
    }
    const avg = (c: Case) => {
      const ms = samples.get(c)!;
      return {
        reqPerSec: median(ms.map((m) => m.reqPerSec)),
        p50Ms: median(ms.map((m) => m.p50Ms)),
        p99Ms: median(ms.map((m) => m.p99Ms)),
        cpuUsPerReq: median(ms.map((m) => m.cpuUsPerReq)),
        errors: ms.reduce((n, m) => n + m.errors, 0),
        maxFds: Math.max(...ms.map((m) => m.maxFds)),
      };
    };
    /**
     * The median over rounds of (this case's req/s ÷ the baseline's in the same round): this machine's speed
     * drifts by tens of percent within a minute, which a ratio of medians taken minutes apart would carry.
     */
    const ratioTo = (c: Case, server: string, path: string) => {
      const bases = measurementsOf(cases, [server], path);
      return bases.length ? median(nearestRatios(c, bases, samples)) : NaN;
    };
    const rows: Row[] = cases
      .filter((c) => !c.again)
      .map((c) => {
        const a = avg(c);
        return {
          mode: c.mode,
          adapter: c.adapter,
          users: c.users,
          reqPerSec: Math.round(a.reqPerSec),
          p50Ms: a.p50Ms,
          p99Ms: a.p99Ms,
          cpuUsPerReq: Math.round(a.cpuUsPerReq),
          ratioToBare: round2(ratioTo(c, c.bare, c.path)),
          ratioToNoop: round2(ratioTo(c, c.noop, c.noop === 'noop-global' ? '/hello' : c.path)),
          maxFds: a.maxFds,
          errors: a.errors,
        };
      });
    printTable(rows);
    const targets = printTargetRatios(cases, samples);
    const latency = await latencyAtFixedRate(cases, samples, servers);
    if (JSON_FILE) writeFileSync(JSON_FILE, JSON.stringify({ rows, targets, latency }, null, 2));
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

/**
 * Latency where it matters: bare, no-op and the metered Express routes at one fixed rate, half of the no-op's
 * saturated throughput (median over the rounds above), each for ROUNDS rounds in alternating order.
 */
async function latencyAtFixedRate(
  cases: Case[],
  samples: Map<Case, Measure[]>,
  servers: Map<string, Server>,
): Promise<{ rate: number; rows: (Latency & { mode: string; adapter: string })[] }> {
  const chatCase = (server: string) =>
    cases.find((c) => !c.again && c.servers.length === 1 && c.servers[0] === server && c.path !== '/hello');
  const noop = chatCase('noop');
  if (!noop) return { rate: 0, rows: [] };
  const rate = Math.round(median(samples.get(noop)!.map((m) => m.reqPerSec)) / 2);
  const picked = ['bare', 'noop', 'sqlite', 'meter-run'].map(chatCase).filter((c): c is Case => !!c);
  const runs = new Map<Case, Latency[]>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of round % 2 === 0 ? picked : [...picked].reverse()) {
      const server = servers.get(c.servers[0])!;
      // The same rate, unmeasured, first (see PREWARM_SECONDS).
      if (PREWARM_SECONDS) await fixedRate(server, rate, PREWARM_SECONDS, CONNECTIONS);
      const l = await fixedRate(server, rate, DURATION, CONNECTIONS);
      runs.set(c, [...(runs.get(c) ?? []), l]);
      process.stderr.write(
        `fixed rate ${rate}/s, round ${round + 1}/${ROUNDS} ${c.mode}: p99 ${l.p99Ms} ms\n`,
      );
    }
  }
  const rows = picked.map((c) => {
    const ls = runs.get(c)!;
    return {
      mode: c.mode,
      adapter: c.adapter,
      reqPerSec: Math.round(median(ls.map((l) => l.reqPerSec))),
      p50Ms: median(ls.map((l) => l.p50Ms)),
      p99Ms: median(ls.map((l) => l.p99Ms)),
      p999Ms: median(ls.map((l) => l.p999Ms)),
      maxMs: median(ls.map((l) => l.maxMs)),
      errors: ls.reduce((n, l) => n + l.errors, 0),
    };
  });
  console.log(
    `\nAt a fixed ${rate} req/s (half the no-op's saturated throughput; open loop, latency from each request's due time, at most ${CONNECTIONS} connections):\n`,
  );
  console.log('| mode | adapter | req/s | p50 ms | p99 ms | p99.9 ms |\n|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.mode} | ${r.adapter} | ${r.reqPerSec} | ${r.p50Ms.toFixed(2)} | ${r.p99Ms.toFixed(2)} | ${r.p999Ms.toFixed(2)} |`,
    );
  return { rate, rows };
}

/**
 * The order in which each round measures the cases (every other round reversed): each ratio a target names
 * is taken between cases measured one after the other, because this machine's speed drifts by tens of per
 * cent within a minute. In the order cases were listed, a metered route was measured five cases (about 40 s)
 * after its no-op baseline, and 1,000 users eleven cases after one user; the per-round ratios of metered ÷
 * no-op then spread over 0.65–1.00 in one run (run 25). The one-user metered server is measured a second and a
 * third time (`again`: a baseline, not a row) beside the many-user, long-ledger and PostgreSQL cases. Cases
 * not placed here (an experiment's) come last.
 */
function measureOrder(cases: Case[]): Case[] {
  const take = (mode: string, adapter: string): Case[] => {
    const i = cases.findIndex((c) => c.mode === mode && c.adapter === adapter);
    return i < 0 ? [] : cases.splice(i, 1);
  };
  const sqlite = 'express, sqlite3';
  const hello = [
    ...take('bare (GET /hello)', 'express'),
    ...take('unmetered, bound on metered controllers', 'express'),
    ...take('noop bound globally (GET /hello)', 'express'),
    ...take('unmetered, bound globally', 'express'),
  ];
  const b3 = take('metered', 'express, better-sqlite3');
  const throttler = take('@nestjs/throttler ttl 1 s', 'express');
  const one = take('metered', sqlite);
  const express = [
    ...take('noop guard+interceptor', 'express'),
    ...take('bare', 'express'),
    ...take('meter.run in the handler', sqlite),
  ];
  const ledger = take('metered, user with 1,000,000 ledger rows', sqlite);
  const u1000 = take('metered, 1,000 users round-robin (cap 1024)', sqlite);
  const u10000 = take('metered, 10,000 users round-robin (cap 256)', sqlite);
  const pg = [...take('metered', 'express, postgres ×1'), ...take('metered', 'express, postgres ×2 (sum)')];
  const pgUsers = [
    ...take('metered, 1,000 users round-robin', 'express, postgres ×1'),
    ...take('metered, 1,000 users round-robin', 'express, postgres ×2 (sum)'),
  ];
  const fastify = [
    ...take('bare', 'fastify'),
    ...take('noop guard+interceptor', 'fastify'),
    ...take('metered', 'fastify, sqlite3'),
    ...take('metered', 'fastify, better-sqlite3'),
  ];
  // --quick measures it once: its ratios are rough anyway, and it must stay under 2 minutes.
  const again = (beside: Case[]): Case[] =>
    QUICK || one.length === 0 || beside.length === 0 ? [] : [{ ...one[0], again: true }];
  return [
    ...hello,
    ...b3,
    ...throttler,
    ...one,
    ...express,
    ...ledger,
    ...again([...ledger, ...u1000]),
    ...u1000,
    ...u10000,
    ...again([...u10000, ...pg]),
    ...pg,
    ...pgUsers,
    ...fastify,
    ...cases,
  ];
}

/** The cases that load these servers on this path: a baseline and its measurements `again`. */
function measurementsOf(cases: Case[], servers: string[], path: string): Case[] {
  return cases.filter((c) => c.servers.join() === servers.join() && c.path === path);
}

/**
 * Per round, `c`'s req/s over its baseline's, the baseline's sample being the one measured nearest to `c`'s
 * in that round's order (a baseline server may be measured more than once a round: `again`).
 */
function nearestRatios(c: Case, bases: Case[], samples: Map<Case, Measure[]>): number[] {
  return samples.get(c)!.map((m, round) => {
    let best = samples.get(bases[0])![round];
    for (const b of bases) {
      const s = samples.get(b)![round];
      if (Math.abs(s.at! - m.at!) < Math.abs(best.at! - m.at!)) best = s;
    }
    return m.reqPerSec / best.reqPerSec;
  });
}

export interface TargetRatio {
  name: string;
  /** The median of the per-round ratios. */
  ratio: number;
  rounds: number[];
}

/**
 * The ratios the targets name, each the median over rounds of one case's req/s over another's measured beside
 * it in the same round (see `measureOrder`), with the rounds' spread.
 */
function printTargetRatios(cases: Case[], samples: Map<Case, Measure[]>): TargetRatio[] {
  const find = (mode: string, adapter: string) =>
    cases.find((c) => !c.again && c.mode === mode && c.adapter === adapter);
  const one = ['metered', 'express, sqlite3'] as const;
  const pairs: [string, readonly [string, string], readonly [string, string]][] = [
    ['metered ÷ no-op (Express)', one, ['noop guard+interceptor', 'express']],
    ['metered ÷ @nestjs/throttler', one, ['@nestjs/throttler ttl 1 s', 'express']],
    ['metered ÷ no-op (Fastify)', ['metered', 'fastify, sqlite3'], ['noop guard+interceptor', 'fastify']],
    ['1,000 users ÷ one user', ['metered, 1,000 users round-robin (cap 1024)', 'express, sqlite3'], one],
    ['10,000 users ÷ one user', ['metered, 10,000 users round-robin (cap 256)', 'express, sqlite3'], one],
    [
      '1,000,000 ledger rows ÷ empty ledger',
      ['metered, user with 1,000,000 ledger rows', 'express, sqlite3'],
      one,
    ],
    ['PostgreSQL ×1 ÷ per-user SQLite', ['metered', 'express, postgres ×1'], one],
    ['PostgreSQL ×2 (sum) ÷ per-user SQLite', ['metered', 'express, postgres ×2 (sum)'], one],
    ['UsageMeter.run ÷ bare', ['meter.run in the handler', 'express, sqlite3'], ['bare', 'express']],
  ];
  const out: TargetRatio[] = [];
  for (const [name, a, b] of pairs) {
    const ca = find(...a);
    const cb = find(...b);
    if (!ca || !cb) continue;
    const bases = measurementsOf(cases, cb.servers, cb.path);
    const rounds = nearestRatios(ca, bases, samples);
    out.push({ name, ratio: round2(median(rounds)), rounds: rounds.map(round2) });
  }
  if (out.length)
    console.log(
      `\n| target ratio (per-round median) | × | rounds (min–max) |\n|---|---|---|\n${out
        .map(
          (t) =>
            `| ${t.name} | ${t.ratio.toFixed(2)} | ${Math.min(...t.rounds).toFixed(2)}–${Math.max(...t.rounds).toFixed(2)} |`,
        )
        .join('\n')}`,
    );
  return out;
}

const round2 = (n: number) => Math.round(n * 100) / 100;

/** A ratio for the table; a row without that baseline in the run shows a dash. */
const ratio = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '—');

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
    ratio(r.ratioToBare),
    ratio(r.ratioToNoop),
    String(r.maxFds ?? ''),
  ]);
  console.log(`\n| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|`);
  for (const l of lines) console.log(`| ${l.join(' | ')} |`);
  console.log(
    `\n${new Date().toISOString()} · median of ${ROUNDS} rounds × ${DURATION} s (ratios: median of the per-round ratios) · ${CONNECTIONS} connections · node ${process.version}`,
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
