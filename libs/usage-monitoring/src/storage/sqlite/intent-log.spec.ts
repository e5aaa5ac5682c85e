import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FORGET_FLUSH_MS,
  IntentLog,
  intentSegmentName,
  isIntentLogFile,
  LEGACY_INTENT_FILE,
  SEGMENT_BYTES,
} from './intent-log';
import { UsageJournal, type JournaledWrite } from './usage-journal';

const OPTIONS = {
  synchronous: 'normal' as 'normal' | 'full',
  driver: 'sqlite3' as const,
  busyTimeoutMs: 1_000,
};
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A bare request row for `id` (the log keeps any write; its path pads the record to `pad` characters). */
function write(id: string, pad = 0): JournaledWrite {
  return {
    request: {
      requestId: id,
      userId: 'u',
      provider: 'openai',
      path: `/${'p'.repeat(pad)}`,
      method: 'POST',
      statusCode: 0,
      durationMs: 0,
      occurredAt: 1_764_000_000_000,
    },
  };
}

/** A leftover's request id (a write read back carries its row as text: the id first). */
const idOf = (r: { write: JournaledWrite }) => (JSON.parse(r.write.row!) as string[])[0];

/** The request ids of a user's leftovers, in order. */
function leftoverIds(log: IntentLog, userId: string): string[] {
  return log.takeLeftovers(userId).map(idOf);
}

const logFiles = (dir: string) => readdirSync(dir).filter(isIntentLogFile).sort();

/** The segment a log writes to, as the log holds it (a test reaches in to swap its descriptor). */
function activeSegment(log: IntentLog): { fd: number | undefined; n: number } {
  return (log as unknown as { segments: { fd: number | undefined; n: number }[] }).segments.at(-1)!;
}

describe('IntentLog', () => {
  let dir: string;
  const open: IntentLog[] = [];
  const openLog = async (options = OPTIONS) => {
    const log = await IntentLog.open(dir, options);
    open.push(log);
    return log;
  };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'usage-intent-log-'));
  });
  afterEach(async () => {
    for (const log of open.splice(0)) await log.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(['normal', 'full'] as const)(
    'hands back, after a crash, exactly the intents never forgotten, in order (synchronous %s)',
    async (synchronous) => {
      const log = await openLog({ ...OPTIONS, synchronous });
      const seqs = ['a1', 'a2', 'a3'].map((id) => log.append('a', write(id)));
      const b = log.append('b', write('b1'));
      const turn = log.turn;
      // Written together, in the turn's check phase: nothing on disk before it.
      expect(readFileSync(join(dir, intentSegmentName(1)), 'utf8')).toBe('');
      await turn;
      expect(
        readFileSync(join(dir, intentSegmentName(1)), 'utf8')
          .split('\n')
          .slice(1),
      ).toHaveLength(4);
      log.forget(seqs[1]);
      log.forget(b);
      log.flush();
      // The process dies here (the log is never closed); the next start reads what the first one wrote.
      const next = await openLog({ ...OPTIONS, synchronous });
      expect(next.leftoverUsers()).toEqual(['a']);
      const left = next.takeLeftovers('a');
      expect(left.map((r) => r.seq)).toEqual([seqs[0], seqs[2]]);
      expect(left.map(idOf)).toEqual(['a1', 'a3']);
      // Sequence numbers go on past the old ones.
      expect(next.append('c', write('c1'))).toBe(b + 1);
      await next.turn;
    },
  );

  it('writes forgets with the next intent, or after FORGET_FLUSH_MS when none comes', async () => {
    const log = await openLog();
    const first = log.append('a', write('a1'));
    await log.turn;
    log.forget(first);
    const second = log.append('a', write('a2'));
    await log.turn;
    const file = join(dir, intentSegmentName(1));
    expect(readFileSync(file, 'utf8')).toMatch(new RegExp(`\nF${first};\nI${second} `));
    log.forget(second);
    expect(readFileSync(file, 'utf8')).not.toContain(`F${second}`);
    await sleep(FORGET_FLUSH_MS + 100);
    expect(readFileSync(file, 'utf8').endsWith(`\nF${second};`)).toBe(true);
    expect((await openLog()).leftoverUsers()).toEqual([]);
  });

  it('skips a record a failed write tore: an intent cut short, a forget without its end', async () => {
    const log = await openLog();
    const seqs = ['a1', 'a2'].map((id) => log.append('a', write(id)));
    await log.turn;
    const file = join(dir, intentSegmentName(1));
    appendFileSync(file, `\nI${seqs[1] + 1} ["a",3,false,["a3","u"`); // an intent cut short
    appendFileSync(file, `\nF${seqs[0]},${seqs[1]}`); // a forget cut short (no ';')
    const next = await openLog();
    expect(leftoverIds(next, 'a')).toEqual(['a1', 'a2']);
  });

  it('starts a new file past SEGMENT_BYTES; removes a closed one once its intents and all older ones are forgotten', async () => {
    const log = await openLog();
    const pad = 4_000;
    const perSegment = Math.ceil(SEGMENT_BYTES / pad);
    const segments: number[][] = [[], [], []];
    for (const s of segments) {
      for (let i = 0; i < perSegment; i++) s.push(log.append('a', write(`r${s.length}`, pad)));
      await log.turn;
    }
    expect(logFiles(dir)).toEqual([1, 2, 3, 4].map(intentSegmentName));
    // The second file's intents all forgotten, the first's not: the second stays (its forgets may name the
    // first's intents, and the first is still read at a start).
    for (const seq of segments[1]) log.forget(seq);
    expect(logFiles(dir)).toEqual([1, 2, 3, 4].map(intentSegmentName));
    for (const seq of segments[0].slice(1)) log.forget(seq);
    expect(logFiles(dir)).toEqual([1, 2, 3, 4].map(intentSegmentName));
    log.forget(segments[0][0]);
    expect(logFiles(dir)).toEqual([3, 4].map(intentSegmentName));
    log.flush();
    const next = await openLog();
    expect(next.takeLeftovers('a').map((r) => r.seq)).toEqual(segments[2]);
  });

  it('removes its files at close when nothing is left to charge, and keeps them when something is', async () => {
    const log = await openLog();
    const seq = log.append('a', write('a1'));
    log.append('a', write('a2'));
    await log.turn;
    log.forget(seq);
    await log.close();
    expect(logFiles(dir)).toEqual([intentSegmentName(1)]);
    const next = await openLog();
    const [left] = next.takeLeftovers('a');
    expect(idOf(left)).toBe('a2');
    next.forget(left.seq);
    await next.close();
    expect(logFiles(dir)).toEqual([]);
  });

  it('rejects a turn whose write fails (the device is full), and forgets its intents with the next write', async () => {
    const log = await openLog();
    const kept = log.append('a', write('a1'));
    await log.turn;
    const segment = activeSegment(log);
    const fd = segment.fd!;
    segment.fd = openSync('/dev/full', 'a');
    const lost = log.append('a', write('a2'));
    await expect(log.turn).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(log.failure).toMatchObject({ code: 'ENOSPC' });
    closeSync(segment.fd);
    segment.fd = fd;
    // A torn copy of the refused intent, as a short write may leave one whole on disk.
    appendFileSync(join(dir, intentSegmentName(1)), `\nI${lost} ${JSON.stringify(['a', 3, false, ['a2']])}`);
    log.append('a', write('a3'));
    await log.turn;
    expect(log.failure).toBeNull();
    expect(readFileSync(join(dir, intentSegmentName(1)), 'utf8')).toContain(`\nF${lost};`);
    const next = await openLog();
    expect(next.takeLeftovers('a').map((r) => r.seq)).toEqual([kept, lost + 1]);
  });

  it("carries an earlier version's SQLite intent log over: its unsettled intents, once; its files removed", async () => {
    const legacy = await UsageJournal.open(dir, OPTIONS, LEGACY_INTENT_FILE);
    const seqs: number[] = [];
    for (const id of ['x1', 'x2', 'x3'])
      legacy.append(
        'x',
        write(id),
        () => undefined,
        (seq) => seqs.push(seq),
      );
    expect(await legacy.caughtUp()).toBe(true);
    legacy.forget(seqs[1]);
    expect(await legacy.drain()).toBe(true);
    await legacy.close();
    expect(existsSync(join(dir, LEGACY_INTENT_FILE))).toBe(true);

    const log = await openLog();
    expect(logFiles(dir)).toEqual([intentSegmentName(1)]);
    expect(leftoverIds(log, 'x')).toEqual(['x1', 'x3']);
    // Carried into the log's own file: a crash now hands them back again.
    const next = await openLog();
    expect(leftoverIds(next, 'x')).toEqual(['x1', 'x3']);
  });
});
