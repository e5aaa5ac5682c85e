import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { PerUserSqliteStore } from '@app/usage-monitoring/storage/sqlite/per-user-sqlite.store';
import { sharedUserId } from '@app/usage-monitoring/storage/shared/shared-user-id';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';
import type { TestApp } from './create-test-app';
import { querySqliteFile } from './sqlite-file';
import { withClient } from './test-store';

const TABLES = ['usage_counters', 'usage_events', 'api_requests', 'usage_alerts', 'usage_reservations'];

/**
 * Runs a read query over one user's usage, the way an operator would look: on the user's SQLite file,
 * or on the shared PostgreSQL schema with each table narrowed to that user (temporary views shadow the
 * tables, so the same SQL serves both). Counts and amounts come back as numbers, booleans as 0/1. On a
 * running app's SQLite store, the journaled rows are applied to the users' files first (`flush`).
 */
export async function queryUserDb<T = Record<string, unknown>>(
  where: TestApp | string,
  userId: string,
  sql: string,
): Promise<T[]> {
  if (typeof where !== 'string' && where.store === 'postgres')
    return queryShared<T>(where.schema!, userId, sql);
  // A running app's journaled rows reach the users' files `applyDelayMs` after their response: now.
  if (typeof where !== 'string') await (where.probe.store as PerUserSqliteStore).flush();
  const dataDir = typeof where === 'string' ? where : where.dataDir;
  const file = join(dataDir, userFileName(userId));
  if (!existsSync(file))
    return Promise.reject(new Error(`no database file for user ${JSON.stringify(userId)}`));
  return querySqliteFile<T>(file, sql);
}

/**
 * `queryUserDb` on a data directory another process writes (a spawned server): its journaled rows reach
 * the user's file up to `applyDelayMs` after their responses, so the query is repeated until it returns
 * at least `rows` rows, or 5 s have passed (the last result is returned either way).
 */
export async function queryUserDbUntil<T = Record<string, unknown>>(
  dataDir: string,
  userId: string,
  sql: string,
  rows: number,
): Promise<T[]> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const found = existsSync(join(dataDir, userFileName(userId)))
      ? await queryUserDb<T>(dataDir, userId, sql)
      : [];
    if (found.length >= rows || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function queryShared<T>(schema: string, userId: string, sql: string): Promise<T[]> {
  return (await querySharedEach<T>(schema, [userId], sql))[0];
}

/**
 * Runs `sql` once per user on one connection, in their order: temporary views shadow the tables, each
 * narrowed to the user a session setting names, which is set before each run.
 */
async function querySharedEach<T>(schema: string, userIds: readonly string[], sql: string): Promise<T[][]> {
  return withClient(async (c) => {
    await c.query('BEGIN');
    try {
      for (const table of TABLES)
        await c.query(
          `CREATE TEMP VIEW ${table} AS SELECT * FROM ${schema}.${table} WHERE user_id = current_setting('usage_test.user_id')`,
        );
      const out: T[][] = [];
      for (const id of userIds) {
        await c.query(`SELECT set_config('usage_test.user_id', $1, true)`, [sharedUserId(id)]);
        out.push((await c.query(sql)).rows as T[]);
      }
      return out;
    } finally {
      await c.query('ROLLBACK');
    }
  }, schema);
}

/**
 * `queryUserDb` for many users at once, in their order: a user without data answers `[]`. On SQLite the
 * journal is applied once and each user's file read on its own; on PostgreSQL one connection serves every
 * user, instead of a connection per user.
 */
export async function queryUserDbs<T = Record<string, unknown>>(
  t: TestApp,
  userIds: readonly string[],
  sql: string,
): Promise<T[][]> {
  if (t.store === 'postgres') return querySharedEach<T>(t.schema!, userIds, sql);
  await (t.probe.store as PerUserSqliteStore).flush();
  const out: T[][] = [];
  for (const id of userIds)
    out.push(existsSync(join(t.dataDir, userFileName(id))) ? await queryUserDb<T>(t.dataDir, id, sql) : []);
  return out;
}

/** Whether anything was stored for a user (a file, or rows in the shared database). */
export async function hasUserData(t: TestApp, userId: string): Promise<boolean> {
  if (t.store === 'sqlite') return existsSync(join(t.dataDir, userFileName(userId)));
  const rows = await queryShared<{ n: number }>(
    t.schema!,
    userId,
    'SELECT (SELECT COUNT(*) FROM usage_counters) + (SELECT COUNT(*) FROM usage_events) + (SELECT COUNT(*) FROM api_requests) AS n',
  );
  return rows[0].n > 0;
}

/** The users' database files in a data directory (without WAL/SHM companions and the store's dot-files). */
export function sqliteFiles(dataDir: string): string[] {
  return readdirSync(dataDir).filter((f) => f.endsWith('.sqlite') && !f.startsWith('.'));
}
