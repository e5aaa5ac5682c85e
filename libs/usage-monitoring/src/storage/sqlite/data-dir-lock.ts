import { randomUUID } from 'node:crypto';
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';

const LOCK_FILE = '.usage-monitoring.lock';

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

/**
 * One live process owns a `dataDir`: its open users' counters live in that process's memory.
 * The lock file holds `pid token`; a lock whose process is gone (e.g. killed with SIGKILL) is taken over.
 */
export class DataDirLock {
  private readonly token = randomUUID();
  private held = false;
  readonly path: string;

  constructor(private readonly dir: string) {
    this.path = join(dir, LOCK_FILE);
  }

  acquire(): void {
    if (heldHere.has(this.dir)) {
      throw new Error(
        `storage.dataDir "${this.dir}" is already used by another UsageMonitoringModule in this process; give each its own dataDir or use the shared storage mode`,
      );
    }
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fd = openSync(this.path, 'wx', 0o600);
        writeSync(fd, `${process.pid} ${this.token}\n`);
        closeSync(fd);
        this.held = true;
        heldHere.add(this.dir);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new Error(`storage.dataDir "${this.dir}" is not writable: ${(e as Error).message}`);
        }
      }
      const pid = this.ownerPid();
      if (pid !== undefined && pid !== process.pid && isAlive(pid)) {
        throw new Error(
          `storage.dataDir "${this.dir}" is in use by process ${pid}. One process owns a per-user SQLite dataDir; run several instances with the shared storage mode`,
        );
      }
      // Stale lock (its process is gone, or it is an old lock of this very pid): take it over.
      try {
        unlinkSync(this.path);
      } catch {
        /* removed by someone else meanwhile; retry */
      }
    }
    throw new Error(`storage.dataDir "${this.dir}": could not take the lock file ${LOCK_FILE}`);
  }

  release(): void {
    if (!this.held) return;
    this.held = false;
    heldHere.delete(this.dir);
    try {
      if (readFileSync(this.path, 'utf8').includes(this.token)) unlinkSync(this.path);
    } catch {
      /* already gone */
    }
  }

  private ownerPid(): number | undefined {
    try {
      const pid = Number.parseInt(readFileSync(this.path, 'utf8').split(' ')[0], 10);
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }
}
