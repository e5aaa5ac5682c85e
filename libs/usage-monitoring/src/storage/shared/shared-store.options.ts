import type { DataSource, DataSourceOptions } from 'typeorm';

/** Shared-database storage: every instance enforces one set of limits exactly (PostgreSQL). */
export interface SharedStorageOptions {
  /** Selects the shared store. */
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
   * How long a request may wait in line behind the database's other statements before the guard answers 503,
   * while the store keeps sending them (the database is answering): a burst, such as many users' first
   * requests on a cold instance (each takes its user's first leases), queues up behind a few statements of
   * tens of milliseconds each. A request that has waited its whole `enforcementTimeoutMs` while a statement
   * was in flight and none answered (a stalled database) still gets its 503 then; one already in line gets
   * it once no statement has answered for two enforcement timeouts. A value below `enforcementTimeoutMs`
   * changes nothing.
   * @default 5000
   */
  queueTimeoutMs?: number;
  /**
   * A reservation not settled after this long (its instance died mid-request) is released by a sweeper.
   * @default 900000 (15 minutes)
   */
  reservationTtlMs?: number;
  /**
   * Durable intent: each reservation row carries the settlement that charges its request at the estimate;
   * a reservation its instance never settled (the process died while the request ran, so its upstream call
   * may still be billed to you) is charged that way, once, with outcome `interrupted`, by the sweeper after
   * `reservationTtlMs`, instead of being released. Requests admitted from a lease (`leases`) have no row
   * and are not covered, so turning this on turns leases off unless `leases` is set. A covered request's
   * response is released without waiting for its ledger row's commit; one admitted from a lease waits. Off by default here: it cost 3–8 % of the shared store's throughput in the bench
   * (a larger reservation row to write and delete per request); see the README.
   * @default false
   */
  durableIntent?: boolean;
  /**
   * Per-instance leases (on by default): while a counter has plenty of room, an instance takes a block of
   * it in one statement and admits requests from that block in memory, one database round trip per block
   * instead of one per request; ledger rows are still written, batched, before each response. Near a
   * limit no block is taken and every request is decided by the database, one statement each. Never admits
   * past a limit; may refuse early, for at most `holdMs` plus the time requests take, while another
   * instance holds unused quota near the limit (see the README). `true` and the default mean
   * `{ requests: 64, holdMs: 1000, headroom: 8 }` (`holdMs` at most half of `reservationTtlMs`).
   * `false` decides every request in the database: for `durableIntent`, which covers only requests that
   * have a reservation row (so with `durableIntent: true` leases are off unless set).
   * @default true (false when durableIntent is true)
   */
  leases?:
    | boolean
    | {
        /**
         * Requests' worth of each counter (at the current request's size) one lease takes. A counter that
         * spends its lease within a quarter of `holdMs` gets one twice as large next, up to 16 times this.
         * @default 64
         */
        requests?: number;
        /** A lease admits for this long after it was taken, then is given back once its requests settled. @default 1000 */
        holdMs?: number;
        /** A lease is taken only while the counter has room for this many leases (of its size). @default 8 */
        headroom?: number;
      };
}

/** The `leases` object form. */
export type SharedLeaseOptions = Exclude<SharedStorageOptions['leases'], boolean | undefined>;

export interface ResolvedLeases {
  requests: number;
  holdMs: number;
  headroom: number;
}

export interface ResolvedSharedStorage {
  type: 'shared';
  dataSource: DataSourceOptions | DataSource;
  migrationsRun: boolean;
  poolSize: number;
  connectMs: number;
  statementMs: number;
  lockMs: number;
  queueTimeoutMs: number;
  reservationTtlMs: number;
  durableIntent: boolean;
  /** Null when leases are off. */
  leases: ResolvedLeases | null;
}
