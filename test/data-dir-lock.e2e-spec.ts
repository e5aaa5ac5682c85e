import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeSqlite } from './utils/test-store';

const ROOT = join(__dirname, '..');
const ROUNDS = 50;
/** A pid above Linux's default pid_max: no live process has it. */
const DEAD_PID = 4194305;

/** Starts a racer; resolves with its lines once it has tried every folder, and a function that ends it. */
function racer(dirs: string[], startAt: number, spacingMs: number) {
  const child = spawn(
    process.execPath,
    [
      '-r',
      'ts-node/register/transpile-only',
      join(ROOT, 'test/fixtures/lock-racer.ts'),
      String(startAt),
      String(spacingMs),
      '40',
      ...dirs,
    ],
    { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] },
  );
  let out = '';
  const done = new Promise<string[]>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('DONE\n')) resolve(out.trim().split('\n').slice(0, -1));
    });
    child.on('exit', (code) => reject(new Error(`racer exited (${code}) early: ${out}`)));
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return { pid: child.pid!, done, end: () => (child.stdin.end(), exited) };
}

describeSqlite('the dataDir lock', () => {
  it(`has exactly one owner when two processes take over the same stale lock at once (${ROUNDS} races)`, async () => {
    const root = mkdtempSync(join(tmpdir(), 'usage-lock-race-'));
    const dirs = Array.from({ length: ROUNDS }, (_, i) => mkdtempSync(join(root, `r${i}-`)));
    // Every folder starts with the lock of a process that died (as after a SIGKILL).
    for (const dir of dirs) writeFileSync(join(dir, '.usage-monitoring.lock'), `${DEAD_PID} stale-token\n`);
    // Both start each race at the same moment; each pauses 40 ms after finding the lock stale, so both
    // have read it as stale before either takes it over (the interleaving that let both own it).
    const startAt = Date.now() + 3000;
    const a = racer(dirs, startAt, 120);
    const b = racer(dirs, startAt, 120);
    try {
      const lines = [...(await a.done), ...(await b.done)];
      for (const dir of dirs) {
        const results = lines.filter((l) => l.startsWith(`${dir} `)).map((l) => l.slice(dir.length + 1));
        expect(results.sort()).toEqual(['owner', 'refused in-use']);
        // One lock file is left, the new owner's; the stale one is gone.
        const locks = readdirSync(dir).filter((f) => f.startsWith('.usage-monitoring.lock'));
        expect(locks).toHaveLength(1);
        const owner = Number(readFileSync(join(dir, locks[0]), 'utf8').split(' ')[0]);
        expect([a.pid, b.pid]).toContain(owner);
      }
    } finally {
      await Promise.all([a.end(), b.end()]);
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);
});
