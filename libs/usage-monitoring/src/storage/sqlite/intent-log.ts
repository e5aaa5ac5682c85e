import {
  closeSync,
  existsSync,
  fdatasync,
  fsyncSync,
  openSync,
  readdirSync,
  readFileSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import type { SqliteDriver } from './sqlite-connection';
import { entryJson, LeftoverRows, parseEntry, UsageJournal, type JournaledWrite } from './usage-journal';

/**
 * The intent log's files (durable intent), directly inside `dataDir`: `.usage-intents.<n>.log`, oldest
 * first. Dot-names, which no user's file can have.
 */
const SEGMENT = /^\.usage-intents\.(\d+)\.log$/;
export const intentSegmentName = (n: number): string => `.usage-intents.${n}.log`;

/** The intent log of versions before 2026-12-07 (a SQLite journal); its intents are carried over at start-up. */
export const LEGACY_INTENT_FILE = '.usage-intents.sqlite';

/** A segment is closed and a new one started past this size; a closed segment goes once all its intents are forgotten. */
export const SEGMENT_BYTES = 1 << 20;

/** Forgotten intents are written at the next intent's write, or after this long (ms) when none comes. */
export const FORGET_FLUSH_MS = 200;

/** Whether `name` (a file directly inside `dataDir`) is one of the intent log's. */
export function isIntentLogFile(name: string): boolean {
  return SEGMENT.test(name) || name.startsWith(LEGACY_INTENT_FILE);
}

interface Segment {
  n: number;
  /** The first sequence number written to it (its intents are `firstSeq` up to the next segment's). */
  firstSeq: number;
  /** Its intents not yet forgotten. */
  outstanding: number;
  /** Open while it is the segment written to, or while an `fdatasync` of it runs. */
  fd: number | undefined;
  bytes: number;
  /** `fdatasync`s of it running. */
  syncs: number;
}

/** One turn's intents: their records, the first one's sequence number, and the promise their callers wait on. */
class Turn {
  readonly texts: string[] = [];
  readonly promise: Promise<void>;
  resolve!: () => void;
  reject!: (e: Error) => void;

  constructor(readonly firstSeq: number) {
    this.promise = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }
}

/**
 * Durable intent's log: each admitted request's charge at its estimate, written before its handler runs and
 * forgotten once it settles or is released; at start-up, the intents never forgotten are handed back
 * (`leftoverUsers`, `takeLeftovers`) and charged.
 *
 * An append-only file. The intents appended in one turn of the event loop are written together, with one
 * `write(2)` on the main thread in that turn's check phase (`setImmediate`), and their requests go on
 * together once it returns (`turn`): the records are then in the operating system's page cache, which a
 * killed process cannot undo (the same promise as a SQLite commit with `synchronous = NORMAL`). With
 * `synchronous: 'full'`, the turn also waits for an `fdatasync`. The SQLite intent log this replaces cost
 * each request a statement on libuv's threads and a trip back through the event loop before its handler ran;
 * a write per request, in the turn each arrived in, cost the host more than it saved (docs/performance.md,
 * "The intent log as a file").
 *
 * Records start with a newline, so a record torn by a failed write is one line that does not parse, skipped:
 * `\nI<seq> <entry>` is an intent (`entryJson`), `\nF<seq>,<seq>,…;` forgets intents. Forgets of settled
 * requests wait for the next intent's write (a lost one repeats a charge the ledger skips: its request id has
 * a row); `flush()` writes them at once (the store calls it after a release, whose request has no row).
 */
export class IntentLog extends LeftoverRows {
  /** Oldest first; the last is the one written to. */
  private readonly segments: Segment[] = [];
  private nextSeq = 1;
  /** Forgets not written yet, as their record's text (`\nF1,2,3`), or ''. */
  private forgets = '';
  private forgetTimer: NodeJS.Timeout | undefined;
  /** The leftovers' segments (a previous run's), by sequence number; this run's are found by range. */
  private readonly oldSeqs = new Map<number, Segment>();
  /** The intents appended in this turn, written together in its check phase (`setImmediate`). */
  private pending: Turn | undefined;
  /** The last write's failure, cleared by the next write that succeeds. */
  failure: Error | null = null;

  private constructor(
    private readonly dir: string,
    private readonly full: boolean,
  ) {
    super();
  }

  /**
   * Reads the segments a previous run left (and the SQLite intent log of an earlier version, whose intents
   * are copied into a new segment before it is deleted), then starts a segment of its own.
   */
  static async open(
    dataDir: string,
    options: { synchronous: 'normal' | 'full'; driver: SqliteDriver; busyTimeoutMs: number },
  ): Promise<IntentLog> {
    const log = new IntentLog(dataDir, options.synchronous === 'full');
    const old = readdirSync(dataDir)
      .map((name) => SEGMENT.exec(name))
      .filter((m) => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    const intents = new Map<number, { userId: string; write: JournaledWrite; n: number }>();
    const forgotten = new Set<number>();
    for (const n of old) {
      for (const line of readFileSync(join(dataDir, intentSegmentName(n)), 'utf8').split('\n')) {
        if (line.startsWith('F') && line.endsWith(';')) {
          for (const s of line.slice(1, -1).split(',')) forgotten.add(Number(s));
        } else if (line.startsWith('I')) {
          const space = line.indexOf(' ');
          const seq = Number(line.slice(1, space));
          let parsed: [string, JournaledWrite];
          try {
            parsed = parseEntry(line.slice(space + 1));
          } catch {
            continue; // torn by a failed write: that request was refused
          }
          if (Number.isSafeInteger(seq)) intents.set(seq, { userId: parsed[0], write: parsed[1], n });
        }
      }
    }
    const segments = new Map<number, Segment>();
    for (const n of old) {
      const s: Segment = { n, firstSeq: 0, outstanding: 0, fd: undefined, bytes: 0, syncs: 0 };
      segments.set(n, s);
      log.segments.push(s);
    }
    // Past every number a remaining file names (a forget may name an intent of a segment already removed).
    for (const seq of forgotten) if (Number.isSafeInteger(seq)) log.nextSeq = Math.max(log.nextSeq, seq + 1);
    for (const [seq, i] of intents) {
      log.nextSeq = Math.max(log.nextSeq, seq + 1);
      if (forgotten.has(seq)) continue;
      const s = segments.get(i.n)!;
      s.outstanding++;
      log.oldSeqs.set(seq, s);
      log.keep(i.userId, { seq, write: i.write });
    }
    log.start((old.at(-1) ?? 0) + 1);
    try {
      await log.carryOver(options);
    } catch (e) {
      await log.close();
      throw e;
    }
    log.trim();
    return log;
  }

  /**
   * Queues an intent for this turn's write and returns its sequence number. `turn` (read right after) resolves
   * once the turn's intents are written (with `synchronous: 'full'`, on disk), and rejects if that fails: the
   * request must then be refused.
   */
  append(userId: string, write: JournaledWrite): number {
    if (this.pending === undefined) {
      this.pending = new Turn(this.nextSeq);
      setImmediate(this.writeTurn);
    }
    this.pending.texts.push(`\nI${this.nextSeq} ${entryJson(userId, write)}`);
    return this.nextSeq++;
  }

  /** The promise of the turn the last `append` joined. */
  get turn(): Promise<void> {
    return this.pending!.promise;
  }

  /** The intent's request settled (its row is durable) or was released: nothing left to charge. */
  forget(seq: number): void {
    if (this.segments.length === 0) return; // closed
    let segment = this.oldSeqs.get(seq);
    if (segment) {
      this.oldSeqs.delete(seq);
    } else {
      let i = this.segments.length - 1;
      while (i > 0 && this.segments[i].firstSeq > seq) i--;
      segment = this.segments[i];
    }
    this.forgets = this.forgets === '' ? `\nF${seq}` : `${this.forgets},${seq}`;
    if (--segment.outstanding === 0 && segment === this.segments[0]) this.trim();
    if (!this.forgetTimer) {
      this.forgetTimer = setTimeout(() => {
        this.forgetTimer = undefined;
        this.flush();
      }, FORGET_FLUSH_MS);
      this.forgetTimer.unref();
    }
  }

  /** Writes the forgets waiting; a failure keeps them for the next write. */
  flush(): void {
    if (this.forgets === '') return;
    try {
      this.write(this.segments[this.segments.length - 1], `${this.forgets};`);
      this.forgets = '';
    } catch {
      // Kept; `failure` says why.
    }
  }

  /** Writes what waits and closes the file; with nothing left to charge, the log's files are removed. */
  async close(): Promise<void> {
    clearTimeout(this.forgetTimer);
    this.forgetTimer = undefined;
    this.writeTurn();
    this.flush();
    while (this.segments.some((s) => s.syncs > 0)) await new Promise((resolve) => setTimeout(resolve, 5));
    const clean = !this.anyLeft && this.segments.every((s) => s.outstanding === 0);
    for (const s of this.segments) {
      if (s.fd !== undefined) closeSync(s.fd);
      s.fd = undefined;
      if (clean) {
        try {
          unlinkSync(join(this.dir, intentSegmentName(s.n)));
        } catch {
          // Read again at the next start, with nothing outstanding in it.
        }
      }
    }
    this.segments.length = 0;
  }

  /** One `write(2)`; a short write is a failure (its torn record is skipped when read back). */
  private write(segment: Segment, text: string): void {
    try {
      const n = writeSync(segment.fd!, text);
      segment.bytes += n;
      if (n !== Buffer.byteLength(text)) throw new Error(`short write to the intent log (${n} bytes)`);
    } catch (e) {
      this.failure = e as Error;
      throw e;
    }
    this.failure = null;
  }

  /** Opens segment `n` for writing (created, or appended to). */
  private start(n: number): void {
    const fd = openSync(join(this.dir, intentSegmentName(n)), 'a', 0o600);
    if (this.full) {
      // The new name must survive a power loss too.
      const dir = openSync(this.dir, 'r');
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    }
    this.segments.push({ n, firstSeq: this.nextSeq, outstanding: 0, fd, bytes: 0, syncs: 0 });
  }

  /** Closes the segment written to and starts the next; on failure, the current one goes on growing. */
  private rotate(): void {
    const current = this.segments[this.segments.length - 1];
    try {
      this.start(current.n + 1);
    } catch {
      current.bytes = 0; // tried again a segment's worth later
      return;
    }
    // With `synchronous: 'full'`, an `fdatasync` still running closes it when it ends.
    if (current.syncs === 0) {
      closeSync(current.fd!);
      current.fd = undefined;
    }
    this.trim();
  }

  /**
   * Removes closed segments whose intents are all forgotten, oldest first: a segment's forgets may name
   * intents of older segments, so it may go only once those have gone.
   */
  private trim(): void {
    while (this.segments.length > 1 && this.segments[0].outstanding === 0) {
      const [s] = this.segments.splice(0, 1);
      try {
        unlinkSync(join(this.dir, intentSegmentName(s.n)));
      } catch {
        // Read again at the next start, with nothing outstanding in it.
      }
    }
  }

  /**
   * Writes the turn's intents, with the forgets waiting, in one `write(2)`, then settles the turn's promise
   * (with `synchronous: 'full'`, after an `fdatasync`). A failed write's intents are forgotten with the next
   * write that succeeds: any of them a short write left whole must not be charged, its request refused.
   */
  private readonly writeTurn = (): void => {
    const turn = this.pending;
    if (turn === undefined) return;
    this.pending = undefined;
    const segment = this.segments[this.segments.length - 1];
    const forgets = this.forgets === '' ? '' : `${this.forgets};`;
    try {
      this.write(segment, forgets + turn.texts.join(''));
    } catch (e) {
      const seqs = turn.texts.map((_, i) => turn.firstSeq + i).join(',');
      this.forgets = this.forgets === '' ? `\nF${seqs}` : `${this.forgets},${seqs}`;
      turn.reject(e as Error);
      return;
    }
    this.forgets = '';
    segment.outstanding += turn.texts.length;
    if (this.full) {
      segment.syncs++;
      fdatasync(segment.fd!, (e) => {
        if (--segment.syncs === 0 && segment !== this.segments.at(-1) && segment.fd !== undefined) {
          closeSync(segment.fd);
          segment.fd = undefined;
        }
        if (e) turn.reject(e);
        else turn.resolve();
      });
    } else {
      turn.resolve();
    }
    if (segment.bytes > SEGMENT_BYTES) this.rotate();
  };

  /**
   * An earlier version's SQLite intent log: its unsettled intents are written to this log (and made durable),
   * then its files are deleted.
   */
  private async carryOver(options: {
    synchronous: 'normal' | 'full';
    driver: SqliteDriver;
    busyTimeoutMs: number;
  }): Promise<void> {
    if (!existsSync(join(this.dir, LEGACY_INTENT_FILE))) return;
    const legacy = await UsageJournal.open(this.dir, options, LEGACY_INTENT_FILE);
    try {
      for (const userId of legacy.leftoverUsers()) {
        for (const row of legacy.takeLeftovers(userId)) {
          this.keep(userId, { seq: this.append(userId, row.write), write: row.write });
        }
      }
      if (this.pending) {
        const written = this.turn;
        this.writeTurn();
        await written;
        fsyncSync(this.segments[this.segments.length - 1].fd!);
      }
    } finally {
      await legacy.close();
    }
    for (const suffix of ['', '-wal', '-shm']) {
      const file = join(this.dir, LEGACY_INTENT_FILE + suffix);
      if (existsSync(file)) unlinkSync(file);
    }
  }
}
