/**
 * `npm run bench:heap -- [--duration S] CASE...`: the bytes a request allocates, by function. Each case (a
 * bench-server mode with optional settings, as for `bench:cpu`, e.g. `noop`, `metered`,
 * `metered:BENCH_BUILD=<other tree>`) runs in a server of its own with `BENCH_HEAP`: warmed for 3 s, then
 * V8's sampling heap profiler runs while autocannon loads it (50 connections, one user unless the case says
 * `users=N`) for `--duration`
 * seconds (5 by default). Prints each case's bytes per request (objects already collected included: what
 * the young generation's collections are paid for), and the functions whose bytes per request differ most
 * from the first case's. Sampled: a function's figure moves by a few per cent between runs. `--keep DIR` also
 * saves each case's profile there (`<case>-<requests>.heapprofile`, for Chrome DevTools or a script).
 */
import autocannon from 'autocannon';
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  chatRoundRobin,
  compile,
  parseCase,
  profileName,
  startServer,
  takeNumberFlag,
  takeStringFlag,
} from './harness';

interface HeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: HeapNode[];
}

const args = process.argv.slice(2);
const DURATION = takeNumberFlag(args, '--duration', 5, true);
const KEEP = takeStringFlag(args, '--keep');
const CASES = args.length ? args : ['noop', 'metered'];
const TOP = 25;

/** Bytes per request by function (`name file:line`), and in all. */
async function profile(spec: string): Promise<{ total: number; byFunction: Map<string, number> }> {
  const { mode, env, users, rows } = parseCase(spec, 1);
  if (rows > 0) throw new Error(`bench:heap does not prefill ledgers (rows=${rows} in case "${spec}")`);
  const dir = mkdtempSync(join(tmpdir(), 'usage-heap-'));
  const file = join(dir, 'heap.json');
  const server = await startServer(spec, { ...env, BENCH_MODE: mode, BENCH_DATA_DIR: dir, BENCH_HEAP: file });
  const load = (duration: number) =>
    autocannon({ url: server.url, connections: 50, duration, requests: [chatRoundRobin(users)] });
  const written = new Promise<void>((resolve, reject) => {
    server.child.stdout!.on('data', (d: Buffer) => {
      const text = d.toString();
      if (text.includes('PROFILE FAILED')) reject(new Error(text.trim()));
      else if (text.includes('PROFILED')) resolve();
    });
  });
  try {
    await load(3);
    server.child.kill('SIGUSR2');
    const r = await load(DURATION);
    server.child.kill('SIGUSR2');
    await written;
    const n = r.requests.total;
    const byFunction = new Map<string, number>();
    let total = 0;
    const walk = (node: HeapNode) => {
      const f = node.callFrame;
      const where = f.url.replace(/^.*usage-bench\//, '').replace(/^.*node_modules\//, '');
      const key = `${f.functionName || '(anonymous)'} ${where}:${f.lineNumber + 1}`;
      byFunction.set(key, (byFunction.get(key) ?? 0) + node.selfSize / n);
      total += node.selfSize / n;
      node.children.forEach(walk);
    };
    walk((JSON.parse(readFileSync(file, 'utf8')) as { head: HeapNode }).head);
    if (KEEP) cpSync(file, join(KEEP, profileName(spec, `-${n}.heapprofile`)));
    process.stdout.write(`${spec}: ${n} requests profiled, ${(total / 1024).toFixed(1)} KB per request\n`);
    return { total, byFunction };
  } finally {
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.once('exit', resolve));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  compile();
  const results: { total: number; byFunction: Map<string, number> }[] = [];
  for (const spec of CASES) results.push(await profile(spec));
  const [base] = results;
  console.log(`\n| case | KB per request | × ${CASES[0]} |\n|---|---|---|`);
  results.forEach((r, i) =>
    console.log(`| ${CASES[i]} | ${(r.total / 1024).toFixed(1)} | ${(r.total / base.total).toFixed(2)} |`),
  );
  for (let i = 1; i < results.length; i++) {
    const keys = new Set([...base.byFunction.keys(), ...results[i].byFunction.keys()]);
    const rows = [...keys]
      .map((k) => [k, (results[i].byFunction.get(k) ?? 0) - (base.byFunction.get(k) ?? 0)] as const)
      .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))
      .slice(0, TOP);
    console.log(`\n| function | bytes per request, ${CASES[i]} − ${CASES[0]} |\n|---|---|`);
    for (const [k, d] of rows) console.log(`| \`${k}\` | ${d.toFixed(0)} |`);
  }
  console.log(`\n${new Date().toISOString()} · ${DURATION} s profiled per case · node ${process.version}`);
}

void main();
