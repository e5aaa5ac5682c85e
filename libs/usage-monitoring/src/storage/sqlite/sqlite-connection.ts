import type BetterSqlite3 from 'better-sqlite3';
import type * as Sqlite3 from 'sqlite3';

/** The SQLite driver of the per-user store (`storage.driver`). */
export type SqliteDriver = 'sqlite3' | 'better-sqlite3';

/**
 * What the group-commit writer, the journal and the background applier need of one SQLite connection,
 * over either driver: statements prepared once per SQL text and reused, with bound parameters.
 *
 * `sqlite3` runs each statement on libuv's thread pool; `better-sqlite3` runs it on the calling thread,
 * which saves the hop between threads (and its callbacks) but blocks the event loop while a commit runs.
 */
export interface SqliteConnection {
  /** Runs a statement; resolves with the last inserted rowid. */
  run(sql: string, params: unknown[]): Promise<number>;
  all<T>(sql: string, params?: unknown[]): Promise<T[]>;
  exec(sql: string): Promise<void>;
  /** Finalizes the prepared statements (before whoever owns the connection closes it). */
  finalizeStatements(): Promise<void>;
  close(): Promise<void>;
}

/**
 * With `better-sqlite3`, SQLite's busy wait blocks the event loop, so it is capped at this (ms); a lock
 * held longer fails the commit, which the writers retry with backoff (and the user gets 503 meanwhile).
 */
export const BETTER_SQLITE3_MAX_BUSY_MS = 20;

/** The busy timeout a connection of `driver` is given for a `storage.busyTimeoutMs` setting. */
export function busyTimeoutFor(driver: SqliteDriver, busyTimeoutMs: number): number {
  return driver === 'better-sqlite3' ? Math.min(busyTimeoutMs, BETTER_SQLITE3_MAX_BUSY_MS) : busyTimeoutMs;
}

/**
 * Loads a driver package. Both are optional peers of this library, loaded only when the per-user store
 * uses them, so a PostgreSQL-only app needs neither: a missing one fails start-up naming the package and
 * the option that asked for it.
 */
function loadDriver<T>(driver: SqliteDriver): T {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(driver) as T;
  } catch (e) {
    const missing = (e as { code?: string }).code === 'MODULE_NOT_FOUND';
    throw new Error(
      `storage.driver '${driver}' (the per-user SQLite store, storage.type 'sqlite', is the default) ` +
        `needs the ${driver} package: ${missing ? `npm install ${driver}` : `it failed to load: ${(e as Error).message}`}. ` +
        `Or use the other driver (storage.driver), or the shared PostgreSQL store (storage: { type: 'shared', dataSource }).`,
    );
  }
}

/** The `sqlite3` package, loaded at the first use. */
export function loadSqlite3(): typeof Sqlite3 {
  return loadDriver<typeof Sqlite3>('sqlite3');
}

/** The `better-sqlite3` package, loaded at the first use. */
export function loadBetterSqlite3(): typeof BetterSqlite3 {
  return loadDriver<typeof BetterSqlite3>('better-sqlite3');
}

/** Wraps a driver's open connection (e.g. a TypeORM DataSource's `driver.databaseConnection`). */
export function wrapConnection(driver: SqliteDriver, db: unknown): SqliteConnection {
  return driver === 'better-sqlite3'
    ? new BetterSqlite3Connection(db as BetterSqlite3.Database)
    : new Sqlite3Connection(db as Sqlite3.Database);
}

/**
 * Opens a file with the bare driver (no DataSource). `mustExist`: never create it. The connection
 * gets the busy timeout and `pragmas`; a failure closes it again.
 */
export async function openConnection(
  driver: SqliteDriver,
  path: string,
  options: { mustExist: boolean; busyTimeoutMs: number; pragmas: string },
): Promise<SqliteConnection> {
  const timeout = busyTimeoutFor(driver, options.busyTimeoutMs);
  let connection: SqliteConnection;
  if (driver === 'better-sqlite3') {
    const Database = loadBetterSqlite3();
    connection = new BetterSqlite3Connection(
      new Database(path, { fileMustExist: options.mustExist, timeout }),
    );
  } else {
    const sqlite3 = loadSqlite3();
    const mode = sqlite3.OPEN_READWRITE | (options.mustExist ? 0 : sqlite3.OPEN_CREATE);
    const db = await new Promise<Sqlite3.Database>((resolve, reject) => {
      const d = new sqlite3.Database(path, mode, (e) => (e ? reject(e) : resolve(d)));
    });
    db.configure('busyTimeout', timeout);
    connection = new Sqlite3Connection(db);
  }
  try {
    await connection.exec(options.pragmas);
  } catch (e) {
    await connection.close().catch(() => undefined);
    throw e;
  }
  return connection;
}

class Sqlite3Connection implements SqliteConnection {
  private readonly statements = new Map<string, Sqlite3.Statement>();

  constructor(private readonly db: Sqlite3.Database) {}

  run(sql: string, params: unknown[]): Promise<number> {
    let stmt = this.statements.get(sql);
    if (!stmt) {
      stmt = this.db.prepare(sql);
      // A statement that fails to prepare reports it to every run; keep the emitter from throwing.
      stmt.on('error', () => undefined);
      this.statements.set(sql, stmt);
    }
    const s = stmt;
    const statements = this.statements;
    return new Promise((resolve, reject) =>
      s.run(params, function (this: Sqlite3.RunResult, err: Error | null) {
        if (!err) return resolve(this.lastID);
        // Prepare again next time: the failure may have been the statement's (e.g. a database replaced).
        if (statements.get(sql) === s) statements.delete(sql);
        s.finalize(() => undefined);
        reject(err);
      }),
    );
  }

  all<T>(sql: string, params: unknown[] = []): Promise<T[]> {
    return new Promise((resolve, reject) =>
      this.db.all(sql, params, (e, rows) => (e ? reject(e) : resolve(rows as T[]))),
    );
  }

  exec(sql: string): Promise<void> {
    return new Promise((resolve, reject) => this.db.exec(sql, (e) => (e ? reject(e) : resolve())));
  }

  async finalizeStatements(): Promise<void> {
    const all = [...this.statements.values()];
    this.statements.clear();
    await Promise.all(all.map((s) => new Promise<void>((resolve) => s.finalize(() => resolve()))));
  }

  async close(): Promise<void> {
    await this.finalizeStatements();
    await new Promise<void>((resolve, reject) => this.db.close((e) => (e ? reject(e) : resolve())));
  }
}

/** Runs a synchronous call as a promise: its result, or its error as a rejection (never a throw). */
function attempt<T>(call: () => T): Promise<T> {
  try {
    return Promise.resolve(call());
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}

/** Synchronous underneath: each call has run (and committed) by the time its promise exists. */
class BetterSqlite3Connection implements SqliteConnection {
  private readonly statements = new Map<string, BetterSqlite3.Statement>();

  constructor(private readonly db: BetterSqlite3.Database) {}

  run(sql: string, params: unknown[]): Promise<number> {
    return attempt(() => {
      let stmt = this.statements.get(sql);
      if (!stmt) {
        stmt = this.db.prepare(sql);
        this.statements.set(sql, stmt);
      }
      try {
        return Number(stmt.run(...params).lastInsertRowid);
      } catch (e) {
        // Prepare again next time, as with sqlite3.
        this.statements.delete(sql);
        throw e;
      }
    });
  }

  all<T>(sql: string, params: unknown[] = []): Promise<T[]> {
    return attempt(() => this.db.prepare(sql).all(...params) as T[]);
  }

  exec(sql: string): Promise<void> {
    return attempt(() => void this.db.exec(sql));
  }

  finalizeStatements(): Promise<void> {
    // better-sqlite3 frees statements with their objects, and closes with statements outstanding.
    this.statements.clear();
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.statements.clear();
    return attempt(() => void this.db.close());
  }
}
