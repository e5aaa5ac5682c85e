import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Database } from 'sqlite3';
import { v7 as uuidv7 } from 'uuid';
import { DataSource } from 'typeorm';
import { USAGE_ENTITIES, USAGE_MIGRATIONS } from '@app/usage-monitoring';
import { USAGE_MIGRATIONS_TABLE } from '@app/usage-monitoring/storage/migrations';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';

/**
 * Creates a user's database with `rows` ledger rows (500 per transaction), before its server starts. Their
 * request ids are UUIDv7 of their own (past) times, as the store writes them, so the rows the server adds
 * land at the end of the primary-key indexes, as they would for a real user with a long history. (Ids
 * that sort after the server's would put every new row in the middle of those indexes instead.)
 */
export async function prefillLedger(dataDir: string, userId: string, rows: number): Promise<void> {
  mkdirSync(dataDir, { recursive: true });
  const file = join(dataDir, userFileName(userId));
  const ds = new DataSource({
    type: 'sqlite',
    database: file,
    entities: USAGE_ENTITIES,
    migrations: USAGE_MIGRATIONS,
    migrationsTableName: USAGE_MIGRATIONS_TABLE,
    migrationsRun: true,
    enableWAL: true,
  });
  await ds.initialize();
  await ds.destroy();
  const db = new Database(file);
  const run = (sql: string, params: unknown[] = []) =>
    new Promise<void>((resolve, reject) => db.run(sql, params, (e) => (e ? reject(e) : resolve())));
  const start = Date.UTC(2026, 0, 1);
  const stmt = db.prepare(
    `INSERT INTO usage_events (request_id, user_id, provider, model, endpoint, method, status_code, input_tokens,
      output_tokens, cost_micros, response_time_ms, request_bytes, response_bytes, user_agent, ip, searches, images,
      pages, estimated, outcome, period_key, occurred_at)
     VALUES (?, ?, 'openai', 'gpt-4o-mini', '/openai/v1/chat/completions', 'POST', 200, 12, 3, 4, 1, 100, 200, NULL, NULL, 0, 0, 0, 0, 'ok', 'month:2026-01-01', ?)`,
  );
  // Each insert awaited through its own callback, and the statement finalized once at the end: a run that
  // finalized a statement per batch with its 500 inserts still queued stopped for good with 196 MB of the
  // file's 438 MB written (2026-12-06 22:27 UTC), no callback ever called and nothing running.
  const insert = (j: number) =>
    new Promise<void>((resolve, reject) =>
      stmt.run([uuidv7({ msecs: start + j }), userId, start + j], (e: Error | null) =>
        e ? reject(e) : resolve(),
      ),
    );
  for (let i = 0; i < rows; i += 500) {
    await run('BEGIN');
    const batch: Promise<void>[] = [];
    for (let j = i; j < Math.min(rows, i + 500); j++) batch.push(insert(j));
    await Promise.all(batch);
    await run('COMMIT');
  }
  await new Promise<void>((resolve, reject) => stmt.finalize((e) => (e ? reject(e) : resolve())));
  await new Promise<void>((resolve) => db.close(() => resolve()));
}
