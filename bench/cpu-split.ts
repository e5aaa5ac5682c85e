/**
 * `npm run bench:cpu -- [--rounds R] [--duration S] [--warm S] [--users N] [--tail MS] CASE...`: where a server's CPU
 * goes, per request. A CASE is a bench-server mode with optional settings, e.g. `metered`, `noop`,
 * `metered:BENCH_STORE=postgres`, `metered:BENCH_JOURNAL=1000,BENCH_MAX_OPEN=64`, `metered:users=1000`,
 * `metered:rows=1000000` (`users` overrides `--users` for that case; `rows` starts the hot user with that
 * many ledger rows, prefilled once and copied into each round's data directory; the other settings are the
 * server's environment).
 *
 * Every round starts each case's server afresh (its own data directory or PostgreSQL schema), warms it
 * (`--warm`, 2 s by default),
 * loads it (autocannon, 50 connections, users round-robin) and reads, from `/proc`, the CPU of its main
 * thread, of its other threads (libuv's pool, where SQLite runs; V8's helpers) and, on PostgreSQL, of the
 * postgres processes (exited backends included). CPU is read `--tail` ms after the load, so deferred work
 * (journal applies) counts. Rounds alternate the order of the cases. Prints the medians over rounds, and
 * each case's req/s against the first case's in the same round (median of those ratios).
 *
 * `--profile`: also runs V8's sampling profiler (every 1 ms) on each server's main thread during the load and
 * prints a second table, the main thread's CPU per request split into the parts of a metered request
 * (see `profile-split.ts`), medians over rounds. The profiler costs throughput of its own; req/s of a
 * profiled run are not comparable with an unprofiled one. `--keep DIR` also saves each round's profile there
 * (`<case>-<round>-<requests>.cpuprofile`, for Chrome DevTools or a script of your own).
 *
 * `--gc`: also counts the server's garbage collections during the load (`BENCH_GC`) and prints young-
 * generation collections (scavenges) per 1,000 requests, their main-thread pause per request, and major
 * collections. Scavenges per request follow the bytes a request allocates: a figure that holds still on this
 * machine while req/s swing by half (metered 8.44–8.58, no-op 5.06–5.10 in six runs on 2026-12-05).
 */
import autocannon from 'autocannon';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CLK_TCK,
  chatRoundRobin,
  compile,
  cpuTicks,
  dropPgSchema,
  median,
  parseCase,
  pgSchema,
  untilQuiet,
  startServer,
  takeNumberFlag,
  takeStringFlag,
  profileName,
  gcLine,
  type Server,
} from './harness';
import { prefillLedger } from './prefill';
import { PARTS, type Part, splitProfile } from './profile-split';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number) => takeNumberFlag(args, name, fallback);
const ROUNDS = flag('--rounds', 3);
const DURATION = flag('--duration', 8);
const USERS = flag('--users', 1);
const TAIL_MS = flag('--tail', 1500);
const WARM_S = flag('--warm', 2);
const PROFILE = args.includes('--profile');
if (PROFILE) args.splice(args.indexOf('--profile'), 1);
const KEEP = takeStringFlag(args, '--keep');
if (KEEP && !PROFILE) throw new Error('--keep saves the profiles of --profile: give both');
const GC = args.includes('--gc');
if (GC) args.splice(args.indexOf('--gc'), 1);
const CASES = args.length ? args : ['noop', 'metered'];

interface Split {
  reqPerSec: number;
  main: number;
  other: number;
  postgres: number;
  /** `--profile`: main-thread µs per request, by part. */
  parts?: Map<Part, number>;
  /** `--gc`: scavenges per 1,000 requests, their pause (µs) per request, major collections in the load. */
  gc?: { scavengesPer1k: number; scavengeUsPerReq: number; major: number };
}

interface GcTotals {
  minor: number;
  minorMs: number;
  major: number;
}

/** A `BENCH_GC` server's collection totals so far (SIGURG, then its `GC …` line). */
async function gcTotals(child: Server['child']): Promise<GcTotals> {
  const [minor, minorMs, major] = await gcLine(child, 'GC');
  return { minor, minorMs, major };
}

/** Sends SIGUSR2 to a bench server started with BENCH_PROFILE and waits for its `PROFILED` line. */
function toggleProfiler(child: Server['child'], wait: boolean): Promise<void> {
  if (!wait) {
    child.kill('SIGUSR2');
    return new Promise((resolve) => setTimeout(resolve, 100)); // the session starts the profiler
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the server did not write its profile')), 30_000);
    const onData = (d: Buffer) => {
      if (!d.toString().includes('PROFILE')) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      if (d.toString().includes('PROFILE FAILED')) reject(new Error(d.toString()));
      else resolve();
    };
    child.stdout!.on('data', onData);
    child.kill('SIGUSR2');
  });
}

/** Data directories whose hot user already has N ledger rows, built once per N and copied per round. */
const prefilled = new Map<number, string>();
async function prefilledDir(rows: number): Promise<string> {
  let dir = prefilled.get(rows);
  if (!dir) {
    dir = mkdtempSync(join(tmpdir(), 'usage-cpu-rows-'));
    const t = Date.now();
    await prefillLedger(dir, 'bench-user-0', rows);
    process.stderr.write(`prefilled ${rows} ledger rows in ${Math.round((Date.now() - t) / 1000)} s\n`);
    prefilled.set(rows, dir);
  }
  return dir;
}

/** CPU ticks of every postgres process, with the backends that exited (reaped by the postmaster). */
function postgresTicks(): number {
  let n = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'postgres') continue;
      n += cpuTicks(Number(pid), undefined, true);
    } catch {
      /* exited meanwhile */
    }
  }
  return n;
}

function threadTicks(pid: number): { main: number; other: number } {
  let other = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    if (Number(tid) === pid) continue;
    try {
      other += cpuTicks(pid, Number(tid));
    } catch {
      /* exited meanwhile */
    }
  }
  return { main: cpuTicks(pid, pid), other };
}

function hammer(url: string, duration: number, users: number) {
  return autocannon({ url, connections: 50, duration, requests: [chatRoundRobin(users)] });
}

async function measure(spec: string, round: number): Promise<Split> {
  const { mode, env, users, rows } = parseCase(spec, USERS);
  const dir = mkdtempSync(join(tmpdir(), 'usage-cpu-'));
  if (rows > 0) cpSync(await prefilledDir(rows), dir, { recursive: true });
  const schema = env.BENCH_STORE === 'postgres' ? await pgSchema(`_${round}`) : undefined;
  if (env.BENCH_STORE === 'postgres' && !schema)
    throw new Error('PostgreSQL is not answering on 127.0.0.1:5432');
  const profileFile = join(dir, 'main.cpuprofile');
  const server = await startServer(spec, {
    ...env,
    BENCH_MODE: mode,
    BENCH_DATA_DIR: dir,
    ...(schema ? { BENCH_SCHEMA: schema } : {}),
    ...(PROFILE ? { BENCH_PROFILE: profileFile } : {}),
    ...(GC ? { BENCH_GC: '1' } : {}),
  });
  try {
    await hammer(server.url, WARM_S, users); // warm-up (creates every user's database when users ≤ ~3,000)
    const pid = server.child.pid!;
    await untilQuiet([pid]); // the warm-up's deferred work (journal applies) is not this measurement's
    if (PROFILE) await toggleProfiler(server.child, false);
    const g0 = GC ? await gcTotals(server.child) : undefined;
    const t0 = threadTicks(pid);
    const p0 = schema ? postgresTicks() : 0;
    const r = await hammer(server.url, DURATION, users);
    const g1 = GC ? await gcTotals(server.child) : undefined;
    if (r.errors + r.timeouts + r.non2xx > 0) {
      process.stderr.write(`  ${spec}: errors ${r.errors}, timeouts ${r.timeouts}, non-2xx ${r.non2xx}\n`);
    }
    await new Promise((resolve) => setTimeout(resolve, TAIL_MS));
    await untilQuiet([pid]);
    const t1 = threadTicks(pid);
    const p1 = schema ? postgresTicks() : 0;
    let parts: Map<Part, number> | undefined;
    if (PROFILE) {
      await toggleProfiler(server.child, true);
      parts = new Map([...splitProfile(profileFile)].map(([k, v]) => [k, v / r.requests.total]));
      if (KEEP)
        cpSync(profileFile, join(KEEP, profileName(spec, `-${round}-${r.requests.total}.cpuprofile`)));
    }
    const us = (ticks: number) => (ticks * (1e6 / CLK_TCK)) / r.requests.total;
    const n = r.requests.total;
    return {
      gc:
        g0 && g1
          ? {
              scavengesPer1k: ((g1.minor - g0.minor) * 1000) / n,
              scavengeUsPerReq: ((g1.minorMs - g0.minorMs) * 1000) / n,
              major: g1.major - g0.major,
            }
          : undefined,
      reqPerSec: r.requests.average,
      main: us(t1.main - t0.main),
      other: us(t1.other - t0.other),
      postgres: us(p1 - p0),
      parts,
    };
  } finally {
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.once('exit', resolve));
    rmSync(dir, { recursive: true, force: true });
    if (schema) await dropPgSchema(schema);
  }
}

async function main(): Promise<void> {
  CASES.forEach((c) => parseCase(c, USERS)); // a bad case fails now, not after minutes of other cases
  compile();
  const samples = new Map<string, Split[]>(CASES.map((c) => [c, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const spec of round % 2 === 0 ? CASES : [...CASES].reverse()) {
      const m = await measure(spec, round);
      samples.get(spec)!.push(m);
      process.stderr.write(`round ${round + 1}/${ROUNDS} ${spec}: ${Math.round(m.reqPerSec)} req/s\n`);
    }
  }
  for (const dir of prefilled.values()) rmSync(dir, { recursive: true, force: true });
  const first = samples.get(CASES[0])!;
  const head = ['case', 'req/s', 'main µs/req', 'other threads µs/req', 'postgres µs/req', `× ${CASES[0]}`];
  console.log(`\n| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|`);
  for (const spec of CASES) {
    const s = samples.get(spec)!;
    const med = (f: (x: Split) => number) => Math.round(median(s.map(f)));
    const ratio = median(s.map((x, i) => x.reqPerSec / first[i].reqPerSec));
    const pg = s.some((x) => x.postgres > 0) ? String(med((x) => x.postgres)) : '—';
    const cells = [
      spec,
      med((x) => x.reqPerSec),
      med((x) => x.main),
      med((x) => x.other),
      pg,
      ratio.toFixed(2),
    ];
    console.log(`| ${cells.join(' | ')} |`);
  }
  if (PROFILE) {
    const head2 = ['main thread, µs per request', ...CASES];
    console.log(`\n| ${head2.join(' | ')} |\n|${head2.map(() => '---').join('|')}|`);
    for (const part of [...PARTS, 'total (profiled)'] as const) {
      const cells = CASES.map((spec) => {
        const vals = samples
          .get(spec)!
          .map((x) =>
            part === 'total (profiled)'
              ? [...x.parts!.values()].reduce((a, b) => a + b, 0)
              : x.parts!.get(part)!,
          );
        return median(vals).toFixed(1);
      });
      console.log(`| ${part} | ${cells.join(' | ')} |`);
    }
  }
  if (GC) {
    const head3 = ['garbage collection (medians)', ...CASES];
    console.log(`\n| ${head3.join(' | ')} |\n|${head3.map(() => '---').join('|')}|`);
    const row = (name: string, f: (g: NonNullable<Split['gc']>) => number, digits: number) =>
      console.log(
        `| ${name} | ${CASES.map((spec) => median(samples.get(spec)!.map((x) => f(x.gc!))).toFixed(digits)).join(' | ')} |`,
      );
    row('scavenges per 1,000 requests', (g) => g.scavengesPer1k, 2);
    row('scavenge pause, µs per request', (g) => g.scavengeUsPerReq, 1);
    row('major collections in the load', (g) => g.major, 0);
  }
  console.log(
    `\n${new Date().toISOString()} · median of ${ROUNDS} rounds × ${DURATION} s · ${USERS} user(s) unless the case says · node ${process.version}`,
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
