import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';
import { tempDataDir } from './utils/create-test-app';
import { postMarked } from './utils/post-status';
import { spawnServer, type ServerProcess } from './utils/spawn-server';
import { describeSqlite } from './utils/test-store';
import { queryUserDb } from './utils/user-db';

// Hooks start a server process (ts-node compiles it: seconds on a cold cache).
jest.setTimeout(60_000);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every request id answered 200 must have exactly one ledger row, none other; counters = ledger. */
async function expectExactLedger(dataDir: string, user: string, acknowledged: string[]) {
  const rows = await queryUserDb<{ endpoint: string }>(dataDir, user, 'SELECT endpoint FROM usage_events');
  const ids = rows.map((r) => r.endpoint.replace('/marked/', '')).sort();
  expect(ids).toEqual([...acknowledged].sort());
  const [counter] = await queryUserDb<{ used: number }>(
    dataDir,
    user,
    "SELECT used FROM usage_counters WHERE metric = 'calls'",
  );
  expect(counter.used).toBe(acknowledged.length);
  const [check] = await queryUserDb<{ integrity_check: string }>(dataDir, user, 'PRAGMA integrity_check');
  expect(check.integrity_check).toBe('ok');
}

/** Sends requests until one is admitted again (recovery without a restart); returns the ids answered 200. */
async function untilRecovered(url: string, agent: Agent, user: string, prefix: string): Promise<string[]> {
  const deadline = Date.now() + 15_000;
  for (let i = 0; Date.now() < deadline; i++) {
    const id = `${prefix}-${i}`;
    const status = await postMarked(url, agent, user, id);
    if (status === 200) return [id];
    expect(status).toBe(503);
    await sleep(100);
  }
  throw new Error(`${user} did not recover`);
}

/** A separate process holds the write lock of one SQLite file for `ms`; resolves once it holds it. */
function holdWriteLock(file: string, ms: number): Promise<ChildProcess> {
  const script = `
    const { Database } = require('sqlite3');
    const db = new Database(process.argv[1]);
    db.exec('PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE', (e) => {
      if (e) { console.error(e.message); process.exit(1); }
      process.stdout.write('LOCKED\\n');
      setTimeout(() => db.exec('ROLLBACK', () => db.close(() => process.exit(0))), Number(process.argv[2]));
    });`;
  const child = spawn(process.execPath, ['-e', script, file, String(ms)], {
    cwd: join(__dirname, '..'),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('LOCKED') && resolve(child));
    child.on('exit', (code) => reject(new Error(`lock holder exited ${code}`)));
  });
}

const exited = (child: ChildProcess) => new Promise((r) => child.once('exit', r));

function tracerPid(pid: number): number {
  const m = /TracerPid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

const hasStrace = spawnSync('strace', ['-V']).status === 0;

describeSqlite('faults (per-user SQLite, server in its own process)', () => {
  let dataDir: string;
  let server: ServerProcess;
  let agent: Agent;
  beforeEach(async () => {
    dataDir = tempDataDir();
    // Journaled rows applied to the users' files at once (not after the default second), so that a
    // fault on a user's file shows right after the request that met it.
    server = await spawnServer({ USAGE_TEST_DATA_DIR: dataDir, USAGE_TEST_JOURNAL_MS: '0' });
    agent = new Agent({ keepAlive: true });
  });
  afterEach(async () => {
    agent.destroy();
    await server?.stop('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('write lock held by another process for 3 s: that user gets 503 once a commit stalls, others flow, nothing lost', async () => {
    const [a, b] = ['plan=big;slow-a', 'plan=big;slow-b'];
    expect(await postMarked(server.url, agent, a, 'a-before')).toBe(200);
    expect(await postMarked(server.url, agent, b, 'b-before')).toBe(200);
    const holder = await holdWriteLock(join(dataDir, userFileName(a)), 3_000);
    const lockedAt = Date.now();
    // Admitted before the stall was known; its commit waits on the lock.
    const first = postMarked(server.url, agent, a, 'a-stuck');
    await sleep(600);
    // A commit has been running for > 250 ms (the enforcement timeout): refused at once.
    const t0 = Date.now();
    expect(await postMarked(server.url, agent, a, 'a-refused')).toBe(503);
    expect(Date.now() - t0).toBeLessThan(1_000);
    // Another user's requests keep flowing while the lock is held.
    const others: number[] = [];
    for (let i = 0; i < 20; i++) others.push(await postMarked(server.url, agent, b, `b-${i}`));
    expect(others).toEqual(Array(20).fill(200));
    expect(Date.now() - lockedAt).toBeLessThan(3_000);
    await exited(holder);
    // The stuck request's response was produced: it is delivered.
    expect(await first).toBe(200);
    const after = await untilRecovered(server.url, agent, a, 'a-after');
    await server.stop('SIGTERM');
    await expectExactLedger(dataDir, a, ['a-before', 'a-stuck', ...after]);
    await expectExactLedger(dataDir, b, ['b-before', ...Array.from({ length: 20 }, (_, i) => `b-${i}`)]);
  });

  (hasStrace ? it.each(['ENOSPC', 'EIO']) : it.skip.each(['ENOSPC', 'EIO']))(
    'every SQLite write fails with %s (strace fault injection): never a lost acknowledged request, no corruption, recovery without restart',
    async (errno) => {
      const users = ['plan=big;disk-a', 'plan=big;disk-b'];
      const acknowledged = new Map<string, string[]>(users.map((u) => [u, []]));
      const send = async (user: string, id: string) => {
        const status = await postMarked(server.url, agent, user, id);
        if (status === 200) acknowledged.get(user)!.push(id);
        return status;
      };
      for (const u of users) expect(await send(u, `${u}-before`)).toBe(200);
      const pid = server.child.pid!;
      const strace = spawn(
        'strace',
        [
          '-f',
          '-qq',
          '-o',
          '/dev/null',
          '-e',
          'trace=pwrite64',
          '-e',
          `inject=pwrite64:error=${errno}`,
          '-p',
          `${pid}`,
        ],
        { stdio: 'ignore' },
      );
      try {
        for (let i = 0; i < 100 && tracerPid(pid) === 0; i++) await sleep(50);
        expect(tracerPid(pid)).not.toBe(0);
        const statuses: number[] = [];
        for (let round = 0; round < 5; round++) {
          statuses.push(...(await Promise.all(users.map((u) => send(u, `${u}-during-${round}`)))));
        }
        // No 500s, no dropped connections: produced responses are delivered, then 503 while writes fail.
        expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
        expect(statuses).toContain(503);
        const health = await fetch(`${server.url}/health/usage`);
        expect(health.status).toBe(503);
      } finally {
        strace.kill('SIGINT');
        await exited(strace);
      }
      for (const u of users)
        acknowledged.get(u)!.push(...(await untilRecovered(server.url, agent, u, `${u}-after`)));
      await server.stop('SIGTERM');
      for (const u of users) await expectExactLedger(dataDir, u, acknowledged.get(u)!);
    },
  );
});
