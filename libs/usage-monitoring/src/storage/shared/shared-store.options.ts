import type { DataSource, DataSourceOptions } from 'typeorm';

/** Shared-database storage: every instance enforces one set of limits exactly (PostgreSQL). */
export interface SharedStorageOptions {
  type: 'shared';
  /**
   * TypeORM options for a PostgreSQL database (the module creates, migrates and closes the DataSource),
   * or an initialised DataSource you own (its schema must already hold the usage tables: add
   * `USAGE_MIGRATIONS` to its migrations).
   * @example { type: 'postgres', url: process.env.USAGE_DATABASE_URL }
   */
  dataSource: DataSourceOptions | DataSource;
  /**
   * Run the usage migrations at start-up (serialised across instances by an advisory lock).
   * @default true when the module creates the DataSource
   */
  migrationsRun?: boolean;
  /**
   * Connections in the pool.
   * @default 10
   */
  poolSize?: number;
  /**
   * Milliseconds to wait for a connection, and the server-side `statement_timeout` / `lock_timeout`.
   * A dead or slow database then yields the 503 within `enforcementTimeoutMs`, never a hung request.
   * @default { connectMs: 1000, statementMs: 2000, lockMs: 1000 }
   */
  timeouts?: { connectMs?: number; statementMs?: number; lockMs?: number };
  /**
   * A reservation not settled after this long (its instance died mid-request) is released by a sweeper.
   * @default 900000 (15 minutes)
   */
  reservationTtlMs?: number;
}

export interface ResolvedSharedStorage {
  type: 'shared';
  dataSource: DataSourceOptions | DataSource;
  migrationsRun: boolean;
  poolSize: number;
  connectMs: number;
  statementMs: number;
  lockMs: number;
  reservationTtlMs: number;
}
