import BetterSqlite3 from 'better-sqlite3';
import { basename } from 'node:path';
import { Database, OPEN_READONLY, OPEN_READWRITE } from 'sqlite3';
import {
  type SqliteConnection,
  wrapConnection,
} from '@app/usage-monitoring/storage/sqlite/sqlite-connection';
import { SQLITE_DRIVER } from './test-store';

/**
 * Opens an existing SQLite file the way an operator's tool would, through the same driver as the app
 * under test: two copies of SQLite in one process (sqlite3's and better-sqlite3's) do not see each
 * other's locks, so a test must never mix them on one file.
 */
export async function openSqliteFile(file: string, readonly = false): Promise<SqliteConnection> {
  if (SQLITE_DRIVER === 'better-sqlite3')
    return wrapConnection('better-sqlite3', new BetterSqlite3(file, { readonly, fileMustExist: true }));
  const db = await new Promise<Database>((resolve, reject) => {
    const d = new Database(file, readonly ? OPEN_READONLY : OPEN_READWRITE, (e) =>
      e ? reject(e) : resolve(d),
    );
  });
  return wrapConnection('sqlite3', db);
}

/** How long `querySqliteFile` retries a file that is busy or cannot be read yet. */
const READ_RETRY_MS = 10_000;

/**
 * One read query on a file, opened read-only and closed again. A read-only connection cannot rebuild the
 * shared-memory index of a file whose last writer is closing it at that moment (the server's LRU or its
 * background applier), which SQLite reports as SQLITE_READONLY (or BUSY): it tries again, up to 10 s (2 s
 * was once too short in CI, for a server applying 2,000 users' files after a restart).
 */
export async function querySqliteFile<T>(file: string, sql: string): Promise<T[]> {
  const deadline = Date.now() + READ_RETRY_MS;
  for (;;) {
    try {
      const db = await openSqliteFile(file, true);
      try {
        return await db.all<T>(sql);
      } finally {
        await db.close();
      }
    } catch (e) {
      const code = String((e as { code?: string }).code ?? '');
      if (!/SQLITE_(READONLY|BUSY)/.test(code)) throw e;
      if (Date.now() >= deadline) {
        // Which file, and after how long: a retried test's log then says where it waited.
        (e as Error).message =
          `${(e as Error).message} (reading ${basename(file)}, retried for ${READ_RETRY_MS / 1000} s)`;
        throw e;
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}
