/**
 * `npm run bench:latency -- [--rate R] [--rounds N] [--duration S] [--warm S] CASE...`: latency at one fixed
 * rate, as `npm run bench` measures it under its table (an open loop: request i due at i / rate, its latency
 * counted from then), for any cases (`noop`, `metered`, `metered:BENCH_INTENT=0`, … as for `bench:cpu`;
 * the chat route, one user; `metered:BENCH_STORE=postgres` on a schema of its own). Each case's server
 * starts once, is warmed (`--warm`, 3 s of autocannon), then measured `--rounds` times (5) for `--duration`
 * seconds (5) at `--rate` req/s (1,400), the cases in alternating order. Prints per case the medians of
 * p50, p99, p99.9 and the slowest request, and what the server's own thread saw in the same rounds: its
 * longest garbage collection and its event loop's delay (p99, max), so that a slow tail can be told apart
 * as this thread's (a pause, a long task) or another's (a commit waiting on SQLite's threads, the client).
 */
import autocannon from 'autocannon';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import {
  chatRoundRobin,
  compile,
  dropPgSchema,
  fixedRate,
  median,
  parseCase,
  pgSchema,
  startServer,
  takeNumberFlag,
  gcLine,
  type Latency,
  type Server,
} from './harness';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number) => takeNumberFlag(args, name, fallback, true);
const RATE = flag('--rate', 1400);
const ROUNDS = flag('--rounds', 5);
const DURATION = flag('--duration', 5);
const WARM_S = flag('--warm', 3);
const CASES = args.length ? args : ['noop', 'metered'];

interface Stalls {
  longestGcMs: number;
  loopP99Ms: number;
  loopMaxMs: number;
}

/** A `BENCH_GC` server's `STALLS` line since the previous call (SIGURG). */
async function stalls(child: ChildProcess): Promise<Stalls> {
  const [longestGcMs, loopP99Ms, loopMaxMs] = await gcLine(child, 'STALLS');
  return { longestGcMs, loopP99Ms, loopMaxMs };
}

async function main(): Promise<void> {
  compile();
  const tmp = mkdtempSync(join(tmpdir(), 'usage-latency-'));
  const servers: Server[] = [];
  const schemas: string[] = [];
  try {
    for (const [i, spec] of CASES.entries()) {
      const { mode, env, users, rows } = parseCase(spec, 1);
      if (users !== 1 || rows !== 0)
        throw new Error(`bench:latency measures one user with an empty ledger ("${spec}")`);
      // A PostgreSQL case gets a schema of its own, dropped at the end.
      let schema: string | undefined;
      if (env.BENCH_STORE === 'postgres') {
        schema = await pgSchema(`_l${i}`);
        if (!schema) throw new Error(`no PostgreSQL answers for "${spec}"`);
        schemas.push(schema);
      }
      const s = await startServer(spec, {
        ...env,
        ...(schema ? { BENCH_SCHEMA: schema } : {}),
        BENCH_MODE: mode,
        BENCH_DATA_DIR: join(tmp, String(i)),
        BENCH_GC: '1',
      });
      servers.push(s);
      await autocannon({ url: s.url, connections: 20, duration: WARM_S, requests: [chatRoundRobin(1)] });
    }
    const runs = new Map<Server, (Latency & Stalls)[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const s of round % 2 === 0 ? servers : [...servers].reverse()) {
        await stalls(s.child);
        const l = await fixedRate(s, RATE, DURATION);
        const r = { ...l, ...(await stalls(s.child)) };
        runs.set(s, [...(runs.get(s) ?? []), r]);
        process.stderr.write(
          `round ${round + 1}/${ROUNDS} ${s.name}: p99 ${r.p99Ms} ms, max ${r.maxMs} ms, loop max ${r.loopMaxMs} ms, longest GC ${r.longestGcMs} ms\n`,
        );
      }
    }
    console.log(
      `\nAt ${RATE} req/s, ${ROUNDS} rounds × ${DURATION} s, medians over rounds (ms):\n\n` +
        '| case | req/s | p50 | p99 | p99.9 | max | longest GC | loop delay p99 | loop delay max | errors |\n' +
        '|---|---|---|---|---|---|---|---|---|---|',
    );
    for (const s of servers) {
      const rs = runs.get(s)!;
      const m = (f: (r: Latency & Stalls) => number) => median(rs.map(f)).toFixed(2);
      console.log(
        `| ${s.name} | ${Math.round(median(rs.map((r) => r.reqPerSec)))} | ${m((r) => r.p50Ms)} | ${m((r) => r.p99Ms)} | ` +
          `${m((r) => r.p999Ms)} | ${m((r) => r.maxMs)} | ${m((r) => r.longestGcMs)} | ${m((r) => r.loopP99Ms)} | ` +
          `${m((r) => r.loopMaxMs)} | ${rs.reduce((n, r) => n + r.errors, 0)} |`,
      );
    }
    console.log(
      `\n${new Date().toISOString()} · ${CASES.length} servers, one user · node ${process.version}`,
    );
  } finally {
    for (const s of servers) s.child.kill('SIGTERM');
    await Promise.all(servers.map((s) => new Promise((resolve) => s.child.once('exit', resolve))));
    for (const schema of schemas) await dropPgSchema(schema).catch(() => undefined);
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
