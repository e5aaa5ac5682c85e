import { randomUUID } from 'node:crypto';
import { linkSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Generation 0 is this name; generation n > 0 is `<name>.<n>`. */
const LOCK_FILE = '.usage-monitoring.lock';
const GENERATION = /^\.usage-monitoring\.lock(?:\.(\d+))?$/;

/** Directories locked by this process (two modules in one process must not share a dataDir either). */
const heldHere = new Set<string>();

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Test hook: runs between finding a stale lock and taking it over (to force two processes to interleave). */
export interface DataDirLockHooks {
  beforeTakeover?: () => void;
}

/**
 * One live process owns a `dataDir`: its open users' counters live in that process's memory.
 *
 * The lock is a file holding `pid token`, created whole and exclusively (written under a private name,
 * then hard-linked into place: `link` fails when the name exists, and the file never appears half
 * written). A lock whose process is gone (killed with SIGKILL, say) is taken over by creating the *next
 * generation* of the file, `.usage-monitoring.lock.<n+1>`, exclusively too: of processes that find the
 * same stale lock at once, exactly one creates the next generation and the others see it held. The
 * winner then checks that no newer generation appeared meanwhile (else it backs off) and removes the
 * stale generations below its own.
 */
export class DataDirLock {
  private readonly token = randomUUID();
  private owned: string | undefined;

  constructor(
    private readonly dir: string,
    private readonly hooks: DataDirLockHooks = {},
  ) {}

  /** The lock file this process holds, if any. */
  get path(): string | undefined {
    return this.owned;
  }

  acquire(): void {
    if (heldHere.has(this.dir)) {
      throw new Error(
        `storage.dataDir "${this.dir}" is already used by another UsageMonitoringModule in this process; give each its own dataDir or use the shared storage mode`,
      );
    }
    for (let attempt = 0; attempt < 10; attempt++) {
      const newest = this.newestGeneration();
      let next = 0;
      if (newest !== undefined) {
        const pid = this.ownerPid(newest);
        if (pid === undefined) continue; // removed meanwhile (released): look again
        if (pid !== process.pid && isAlive(pid)) {
          throw new Error(
            `storage.dataDir "${this.dir}" is in use by process ${pid}. One process owns a per-user SQLite dataDir; run several instances with the shared storage mode`,
          );
        }
        // Stale: its process is gone (or it is an old lock of this very pid, e.g. pid 1 in a container).
        this.hooks.beforeTakeover?.();
        next = newest + 1;
      }
      if (!this.create(next)) continue; // another process created that generation first
      if ((this.newestGeneration() ?? next) > next) {
        // A newer generation appeared while this one was being taken: the newer one wins.
        this.remove(next);
        continue;
      }
      this.owned = this.fileOf(next);
      heldHere.add(this.dir);
      for (let g = 0; g < next; g++) this.remove(g, true);
      return;
    }
    throw new Error(`storage.dataDir "${this.dir}": could not take the lock file ${LOCK_FILE}`);
  }

  release(): void {
    if (!this.owned) return;
    const file = this.owned;
    this.owned = undefined;
    heldHere.delete(this.dir);
    try {
      if (readFileSync(file, 'utf8').includes(this.token)) unlinkSync(file);
    } catch {
      /* already gone */
    }
  }

  /** Creates generation `g` holding this process's pid and token; false when it exists already. */
  private create(g: number): boolean {
    const draft = join(this.dir, `${LOCK_FILE}.${process.pid}.${this.token}.draft`);
    try {
      writeFileSync(draft, `${process.pid} ${this.token}\n`, { mode: 0o600 });
      linkSync(draft, this.fileOf(g));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw new Error(`storage.dataDir "${this.dir}" is not writable: ${(e as Error).message}`);
    } finally {
      try {
        unlinkSync(draft);
      } catch {
        /* never written */
      }
    }
  }

  /** Removes generation `g`: any (a stale one below ours), or only when it holds this token. */
  private remove(g: number, any = false): void {
    try {
      if (any || readFileSync(this.fileOf(g), 'utf8').includes(this.token)) unlinkSync(this.fileOf(g));
    } catch {
      /* already gone */
    }
  }

  private newestGeneration(): number | undefined {
    let newest: number | undefined;
    for (const name of readdirSync(this.dir)) {
      const m = GENERATION.exec(name);
      if (m) newest = Math.max(newest ?? 0, m[1] === undefined ? 0 : Number(m[1]));
    }
    return newest;
  }

  private fileOf(g: number): string {
    return join(this.dir, g === 0 ? LOCK_FILE : `${LOCK_FILE}.${g}`);
  }

  private ownerPid(g: number): number | undefined {
    try {
      const pid = Number.parseInt(readFileSync(this.fileOf(g), 'utf8').split(' ')[0], 10);
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }
}
