import { join } from 'node:path';
import { existsSync, readdirSync } from 'node:fs';
import { Database, OPEN_READONLY } from 'sqlite3';
import { userFileName } from '@app/usage-monitoring';

/** Runs a read query on a user's database file, directly (the way an operator would look). */
export function queryUserDb<T = Record<string, unknown>>(
  dataDir: string,
  userId: string,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const file = join(dataDir, userFileName(userId));
  if (!existsSync(file))
    return Promise.reject(new Error(`no database file for user ${JSON.stringify(userId)}`));
  return new Promise((resolve, reject) => {
    const db = new Database(file, OPEN_READONLY, (err) => {
      if (err) return reject(err);
      db.all(sql, params, (e, rows) => {
        db.close();
        if (e) reject(e);
        else resolve(rows as T[]);
      });
    });
  });
}

/** The database files in a data directory (without WAL/SHM companions). */
export function sqliteFiles(dataDir: string): string[] {
  return readdirSync(dataDir).filter((f) => f.endsWith('.sqlite'));
}
