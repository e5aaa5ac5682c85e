/** What the benchmark scripts share: the compiled servers, the request, PostgreSQL schemas, medians. */
import type autocannon from 'autocannon';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { Client } from 'pg';
import { spawnServer } from '../test/utils/spawn-server';

export interface Server {
  name: string;
  url: string;
  child: ChildProcess;
}

export const BODY = JSON.stringify({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Say hello to the benchmark' }],
  max_tokens: 16,
});

/** The metered chat request, each one from the next of `users` users in turn (`bench-user-<n>`). */
export function chatRoundRobin(users: number): autocannon.Request {
  let next = 0;
  return {
    method: 'POST',
    path: '/openai/v1/chat/completions',
    headers: { 'content-type': 'application/json' },
    body: BODY,
    setupRequest: (req: autocannon.Request) => ({
      ...req,
      headers: { ...req.headers, authorization: `Bearer bench-user-${next++ % users}` },
    }),
  };
}

export const ROOT = join(__dirname, '..');
/** Where the servers' JavaScript is compiled to (inside node_modules, so packages resolve from it). */
export const BUILD = join(ROOT, 'node_modules', '.cache', 'usage-bench');

/**
 * Compiles the project once (without type checking: `npm run typecheck` does that) so that each server
 * process starts from JavaScript: ts-node compiling the sources again in every one of a dozen servers cost
 * ~3 s of CPU each, most of `--quick`'s start-up.
 */
export function compile(): void {
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  // Incremental: a second run recompiles only what changed.
  const flags = ['--noCheck', '--noEmit', 'false', '--declaration', 'false'];
  flags.push('--tsBuildInfoFile', join(BUILD, 'tsbuildinfo'));
  execFileSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.json'), ...flags, '--outDir', BUILD], {
    stdio: 'inherit',
  });
}

/**
 * Starts a bench server. `BENCH_BUILD` in `env` runs another compiled tree instead of this one's (another
 * checkout's `node_modules/.cache/usage-bench`, compiled by a bench run there): a before/after comparison
 * in one run, e.g. `npm run bench:cpu -- metered metered:BENCH_BUILD=/path/to/old/node_modules/.cache/usage-bench`.
 */
export async function startServer(name: string, env: Record<string, string>): Promise<Server> {
  const build = env.BENCH_BUILD ?? BUILD;
  const s = await spawnServer(
    { ...env, TS_NODE_BASEURL: build },
    60_000,
    join(build, 'bench', 'bench-server.js'),
  );
  return { name, url: s.url, child: s.child };
}

/** Ticks per second of `/proc/<pid>/stat`'s CPU times (USER_HZ). */
export const CLK_TCK = 100;

/**
 * CPU ticks a process (or, with `task`, one of its threads) has used: utime + stime; with `reaped`, plus
 * the children it has waited for (cutime + cstime), e.g. PostgreSQL backends that have exited.
 */
export function cpuTicks(pid: number, task?: number, reaped = false): number {
  const file = task === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${task}/stat`;
  const f = readFileSync(file, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]) + (reaped ? Number(f[13]) + Number(f[14]) : 0);
}

/**
 * Waits until the processes are quiet (at most `QUIET_TICKS` of CPU in a 250 ms window, all together),
 * at most `maxMs`; resolves with the time waited. Work a server defers past its load (a journal's
 * applies to users' files) is then counted in its own case, and never runs under the next one.
 */
export async function untilQuiet(pids: number[], maxMs = 30_000): Promise<number> {
  const start = Date.now();
  const total = () => pids.reduce((n, pid) => n + cpuTicks(pid), 0);
  let last = total();
  while (Date.now() - start < maxMs) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const now = total();
    if (now - last <= QUIET_TICKS) break;
    last = now;
  }
  return Date.now() - start;
}
/** CPU ticks (1/CLK_TCK s) in 250 ms below which a server counts as idle: 2 ticks = 8 % of a core. */
const QUIET_TICKS = 2;

export async function pgSchema(suffix = ''): Promise<string | undefined> {
  const c = new Client({
    host: '127.0.0.1',
    port: 5432,
    user: 'postgres',
    database: 'test',
    connectionTimeoutMillis: 1500,
  });
  try {
    await c.connect();
    const schema = `usage_bench_${process.pid}${suffix}`;
    await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await c.query(`CREATE SCHEMA ${schema}`);
    return schema;
  } catch {
    return undefined;
  } finally {
    await c.end().catch(() => undefined);
  }
}

export async function dropPgSchema(schema: string): Promise<void> {
  const c = new Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' });
  await c.connect();
  await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await c.end();
}

/**
 * The median of a mode's rounds (the mean of the middle two for an even count): on a shared 2-core machine
 * one round in a few is disturbed, and a mean would carry the disturbance into the ratios.
 */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * Sends a `BENCH_GC` server SIGURG and resolves with the numbers of its next line that starts with `tag`
 * (`GC …`, `STALLS …`: see `bench-server.ts`).
 */
export function gcLine(child: ChildProcess, tag: 'GC' | 'STALLS'): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not print its ${tag} line`)), 10_000);
    const line = new RegExp(`^${tag} ([\\d. ]+)$`, 'm');
    const onData = (d: Buffer) => {
      const m = line.exec(d.toString());
      if (!m) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      resolve(m[1].split(' ').map(Number));
    };
    child.stdout!.on('data', onData);
    child.kill('SIGURG');
  });
}

/**
 * Takes `name VALUE` out of `args` (a script's command line) and returns the number, or `fallback` when the
 * flag is absent. A value that is not a number, or is negative (or 0 when `positive`), is an error.
 */
export function takeNumberFlag(args: string[], name: string, fallback: number, positive = false): number {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v < 0 || (positive && v === 0))
    throw new Error(`${name} needs a ${positive ? 'positive ' : ''}number (got ${args[i + 1]})`);
  args.splice(i, 2);
  return v;
}

/** A flag's value (`--name VALUE`), taken out of `args`; `undefined` when the flag is absent. */
export function takeStringFlag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined || v.startsWith('--')) throw new Error(`${name} needs a value`);
  args.splice(i, 2);
  return v;
}

/** A file name for a case's saved profile: the case with anything but letters, digits, `=`, `_`, `-` as `_`. */
export function profileName(spec: string, suffix: string): string {
  return `${spec.replace(/[^a-z0-9=_-]/gi, '_')}${suffix}`;
}

/**
 * A bench case, `mode[:NAME=VALUE,...]`: a bench-server mode and its settings. `users` (default
 * `defaultUsers`) and `rows` (ledger rows the hot user starts with) are the bench's; the others are the
 * server's environment.
 */
export function parseCase(
  spec: string,
  defaultUsers: number,
): { mode: string; env: Record<string, string>; users: number; rows: number } {
  const [mode, settings] = spec.split(':');
  const env: Record<string, string> = {};
  let users = defaultUsers;
  let rows = 0;
  const whole = (k: string, v: string, min: number) => {
    if (Number.isSafeInteger(Number(v)) && Number(v) >= min) return Number(v);
    throw new Error(`${k} must be a whole number ≥ ${min} in case "${spec}"`);
  };
  for (const kv of settings ? settings.split(',') : []) {
    const [k, v] = kv.split('=');
    if (!k || v === undefined) throw new Error(`bad setting "${kv}" in case "${spec}" (want NAME=VALUE)`);
    if (k === 'users') users = whole(k, v, 1);
    else if (k === 'rows') rows = whole(k, v, 0);
    else env[k] = v;
  }
  return { mode, env, users, rows };
}

const round2 = (x: number) => Math.round(x * 100) / 100;

/**
 * Latency at a fixed request rate (below saturation), as a client sees it: p50, p99, p99.9 in ms. An open
 * loop: request i is due at start + i / rate and its latency counts from then (a request the generator or a
 * full connection pool held back is late by that much too). autocannon's `overallRate` was tried first: it
 * lets each connection send its share of a second back to back at the second's start, so its "fixed rate"
 * is a burst a second (bare Nest's p99 read 278 ms at half its throughput, `--quick`, 2026-12-05).
 */
export async function fixedRate(
  server: Server,
  rate: number,
  duration: number,
  connections = 50,
): Promise<Latency> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const url = new URL('/openai/v1/chat/completions', server.url);
  const headers = {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(BODY)),
    authorization: 'Bearer bench-user-0',
  };
  const total = Math.round(rate * duration);
  const interval = 1000 / rate;
  const latencies: number[] = [];
  let errors = 0;
  const start = performance.now() + 10;
  await new Promise<void>((resolve) => {
    let sent = 0;
    let done = 0;
    const finish = () => {
      if (++done === total) resolve();
    };
    const fire = (due: number) => {
      const req = http.request(url, { method: 'POST', agent, headers }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode !== 200) errors++;
          latencies.push(performance.now() - due);
          finish();
        });
      });
      req.on('error', () => {
        errors++;
        finish();
      });
      req.end(BODY);
    };
    const tick = () => {
      const now = performance.now();
      for (; sent < total && start + sent * interval <= now; sent++) fire(start + sent * interval);
      if (sent < total) setTimeout(tick, Math.max(0, start + sent * interval - performance.now()));
    };
    setTimeout(tick, 10);
  });
  const elapsedS = (performance.now() - start) / 1000;
  agent.destroy();
  latencies.sort((x, y) => x - y);
  const at = (q: number) =>
    round2(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN);
  return {
    reqPerSec: total / elapsedS,
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    p999Ms: at(0.999),
    maxMs: round2(latencies[latencies.length - 1] ?? NaN),
    errors,
  };
}

export interface Latency {
  reqPerSec: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  errors: number;
}
