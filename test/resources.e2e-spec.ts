import fc from 'fast-check';
import { readdirSync, readFileSync, readlinkSync, realpathSync, rmSync } from 'node:fs';
import { Agent } from 'node:http';
import { join, sep } from 'node:path';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';
import { tempDataDir } from './utils/create-test-app';
import { postStatus } from './utils/post-status';
import { spawnServer, type ServerProcess } from './utils/spawn-server';
import { describeSqlite, SQLITE_DRIVER } from './utils/test-store';
import { queryUserDb, sqliteFiles } from './utils/user-db';

// Hooks start a server process (ts-node compiles it: seconds on a cold cache).
jest.setTimeout(60_000);

/**
 * `USAGE_TEST_HEAVY=1` (set by CI): 20,000 users through the default driver; otherwise, and through
 * better-sqlite3 (the same files, descriptors and LRU), 2,000.
 */
const USERS = process.env.USAGE_TEST_HEAVY === '1' && SQLITE_DRIVER === 'sqlite3' ? 20_000 : 2_000;
const CAP = 64;
const CONCURRENCY = 32;

const post = (url: string, agent: Agent, user: string) =>
  postStatus(`${url}/openai/v1/chat/completions`, agent, user, { max_tokens: 5 });

/** Open descriptors of the server: all, and those on files inside dataDir (SQLite's db, -wal, -shm). */
function descriptors(pid: number, dataDir: string): { all: number; data: number } {
  const root = realpathSync(dataDir) + sep;
  let data = 0;
  const fds = readdirSync(`/proc/${pid}/fd`);
  for (const fd of fds) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(root)) data++;
    } catch {
      // closed while we looked
    }
  }
  return { all: fds.length, data };
}

const rssMb = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

/** The server's heap and RSS (MB) right after a full garbage collection (`GET /__test/memory`). */
async function memoryAfterGc(url: string): Promise<{ heap: number; rss: number }> {
  const res = await fetch(`${url}/__test/memory`);
  const { heapUsed, rss } = (await res.json()) as { heapUsed: number; rss: number };
  return { heap: heapUsed / 2 ** 20, rss: rss / 2 ** 20 };
}

/** Random ids of any code points that survive UTF-8 (what a token can carry), distinct. */
function randomIds(n: number): string[] {
  const ids = new Set<string>();
  const arb = fc.string({ unit: 'binary', minLength: 1, maxLength: 80 });
  while (ids.size < n) {
    for (const id of fc.sample(arb, n)) {
      if (ids.size < n && Buffer.from(id, 'utf8').toString('utf8') === id) ids.add(id);
    }
  }
  return [...ids];
}

describeSqlite(
  `resources: ${USERS} distinct random users through the per-user store (LRU cap ${CAP})`,
  () => {
    let dataDir: string;
    let server: ServerProcess;
    // Each attempt (a retried one too) starts on a new server and an empty dataDir.
    beforeEach(async () => {
      dataDir = tempDataDir();
      // The defaults' timeouts: 32 first requests at once keep the threadpool busy opening and closing
      // files, and they wait for that within the open timeout (with only the 250 ms enforcement timeout,
      // 18–38 of 20,000 were answered 503 in two runs, before `storage.openTimeoutMs`).
      server = await spawnServer(
        {
          USAGE_TEST_DATA_DIR: dataDir,
          USAGE_TEST_MAX_OPEN: String(CAP),
          USAGE_TEST_MEMORY_PROBE: '1',
        },
        undefined,
        undefined,
        ['--expose-gc'],
      );
    });
    afterEach(async () => {
      await server?.stop('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    });

    it('serves every user; open files stay under the cap, descriptors and memory plateau; one file per id, all inside dataDir', async () => {
      const pid = server.child.pid!;
      const ids = randomIds(USERS);
      const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
      const samples: { done: number; all: number; data: number; rss: number }[] = [];
      const statuses = new Map<number, number>();
      let next = 0;
      let done = 0;
      let atQuarter: Promise<{ heap: number; rss: number }> | undefined;
      const sample = () => samples.push({ done, ...descriptors(pid, dataDir), rss: rssMb(pid) });
      const sampler = setInterval(() => {
        try {
          sample();
        } catch {
          clearInterval(sampler); // the server is gone: the assertions below report it
        }
      }, 250);
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (next < ids.length) {
            const status = await post(server.url, agent, ids[next++]);
            statuses.set(status, (statuses.get(status) ?? 0) + 1);
            if (++done === USERS / 4) atQuarter = memoryAfterGc(server.url);
          }
        }),
      );
      clearInterval(sampler);
      sample();
      const quarterMem = await atQuarter!;
      const endMem = await memoryAfterGc(server.url);

      expect(Object.fromEntries(statuses)).toEqual({ 200: USERS });
      // SQLite holds 3 descriptors per open database (file, -wal, -shm), plus the dataDir lock.
      const maxData = Math.max(...samples.map((s) => s.data));
      expect(maxData).toBeLessThanOrEqual(CAP * 3 + 16);
      // Plateau: from a quarter of the run to the end, descriptors grow by at most 16.
      const quarter = samples.find((s) => s.done >= USERS / 4)!;
      const last = samples[samples.length - 1];
      // Descriptors other than the databases' (sockets, pipes, the event loop's) do not grow.
      expect(last.all - last.data - (quarter.all - quarter.data)).toBeLessThanOrEqual(16);
      // Memory, after a full collection: a user whose file the LRU closed stays in memory with its
      // counters (\`storage.journal.maxUsersInMemory\`, 100,000 by default), at most 2 KB of heap each
      // (README); anything per request retained, or a connection not freed, would exceed it. RSS, which
      // also holds SQLite's native memory, grows by at most the heap's growth and 48 MB.
      const added = (USERS * 3) / 4;
      const heapPerUserKb = ((endMem.heap - quarterMem.heap) * 1024) / added;
      process.stdout.write(
        `resources: ${USERS} users, max dataDir fds ${maxData} (≤ ${CAP * 3 + 16}), other fds ${quarter.all - quarter.data} → ${last.all - last.data}; after GC: heap ${quarterMem.heap.toFixed(1)} → ${endMem.heap.toFixed(1)} MB (${heapPerUserKb.toFixed(2)} KB per added user), RSS ${quarterMem.rss.toFixed(0)} → ${endMem.rss.toFixed(0)} MB; RSS sampled ${quarter.rss.toFixed(0)} → ${last.rss.toFixed(0)} MB\n`,
      );
      expect(endMem.heap - quarterMem.heap).toBeLessThan((added * 2) / 1024 + 8);
      expect(endMem.rss - quarterMem.rss).toBeLessThan(Math.max(0, endMem.heap - quarterMem.heap) + 48);

      // Users evicted long ago are served again, their counters reloaded from their files.
      const again = ids.slice(0, 50);
      for (const id of again) expect(await post(server.url, agent, id)).toBe(200);
      agent.destroy();
      await server.stop('SIGTERM');

      const root = realpathSync(dataDir) + sep;
      const files = sqliteFiles(dataDir);
      expect(files).toHaveLength(USERS);
      for (const f of files) expect(realpathSync(join(dataDir, f)).startsWith(root)).toBe(true);
      expect(new Set(ids.map(userFileName))).toEqual(new Set(files));
      for (const id of again.slice(0, 5)) {
        const rows = await queryUserDb<{ user_id: string }>(dataDir, id, 'SELECT user_id FROM usage_events');
        expect(rows).toEqual([{ user_id: id }, { user_id: id }]);
      }
    }, 600_000);
  },
);
