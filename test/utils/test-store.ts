import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import type { DataSourceOptions } from 'typeorm';

/** Which store the end-to-end suite runs against (the `e2e-pg` Jest project sets `postgres`). */
export const STORE: 'sqlite' | 'postgres' =
  process.env.USAGE_TEST_STORE === 'postgres' ? 'postgres' : 'sqlite';

/** The per-user store's SQLite driver in this project (the `e2e-better-sqlite3` project sets it). */
export const SQLITE_DRIVER: 'sqlite3' | 'better-sqlite3' =
  process.env.USAGE_TEST_SQLITE_DRIVER === 'better-sqlite3' ? 'better-sqlite3' : 'sqlite3';

/** Whether the PostgreSQL server answered in the global setup. */
export const PG_UP = process.env.USAGE_TEST_PG === 'up';

export const PG = { host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' } as const;

// Outside Jest (a test server in its own process) there is no `describe`; these are then unused.
const jestDescribe = (globalThis as { describe?: jest.Describe }).describe;
const run = jestDescribe as jest.Describe;
const skip = jestDescribe?.skip as jest.Describe;

/** `describe` that runs in this project: skipped in the PostgreSQL project when no server answers. */
export const describeStore: jest.Describe = STORE === 'postgres' && !PG_UP ? skip : run;
/** Scenarios that only exist with per-user SQLite files (lock file, data directory, LRU of files). */
export const describeSqlite: jest.Describe = STORE === 'sqlite' ? run : skip;
/** Scenarios of the shared store itself: the PostgreSQL project, when a server answers. */
export const describePostgres: jest.Describe = STORE === 'postgres' && PG_UP ? run : skip;

/** A fresh schema per test app keeps apps apart in the one test database. */
export async function createSchema(): Promise<string> {
  const schema = `usage_t_${randomBytes(6).toString('hex')}`;
  await withClient((c) => c.query(`CREATE SCHEMA ${schema}`));
  return schema;
}

export async function dropSchema(schema: string): Promise<void> {
  await withClient((c) => c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`));
}

export function pgOptions(schema: string, port: number = PG.port): DataSourceOptions {
  return {
    type: 'postgres',
    host: PG.host,
    port,
    username: PG.user,
    database: PG.database,
    extra: { options: `-c search_path=${schema}` },
  };
}

/** A client whose bigint, numeric and boolean values read like SQLite's (numbers, 0/1). */
export async function withClient<T>(fn: (c: Client) => Promise<T>, schema?: string): Promise<T> {
  const client = new Client({
    ...PG,
    options: schema ? `-c search_path=${schema}` : undefined,
    types: {
      getTypeParser: ((oid: number) => {
        if (oid === 20 || oid === 21 || oid === 23 || oid === 1700) return (v: string) => Number(v);
        if (oid === 16) return (v: string) => (v === 't' ? 1 : 0);
        return (v: string) => v;
      }) as never,
    },
  });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Runs one statement in a schema (see `withClient` for how values read). */
export async function sql<T = Record<string, unknown>>(
  schema: string,
  text: string,
  values: unknown[] = [],
): Promise<T[]> {
  return withClient(async (c) => (await c.query(text, values)).rows as T[], schema);
}
