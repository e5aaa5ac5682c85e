import { DataSource, type DataSourceOptions } from 'typeorm';
import { USAGE_ENTITIES } from '../entities';
import { USAGE_MIGRATIONS, USAGE_MIGRATIONS_TABLE } from '../migrations';
import { MIGRATION_LOCK_KEY } from './postgres-statements';
import type { ResolvedSharedStorage } from './shared-store.options';

/** What the store runs statements on: the pool, or one of its clients (a transaction). */
export interface PgQueryable {
  query<R = Record<string, unknown>>(
    config: { name?: string; text: string; values?: unknown[] } | string,
    values?: unknown[],
  ): Promise<{ rows: R[]; rowCount: number | null }>;
}

/** The pg pool behind a TypeORM PostgreSQL DataSource. */
export interface PgPool extends PgQueryable {
  /** A client of its own, for a transaction; `release(true)` discards a broken one. */
  connect(): Promise<PgQueryable & { release(destroy?: boolean): void }>;
}

/** Builds the DataSource the module owns: the usage entities and migrations, pool size and timeouts. */
export function createSharedDataSource(options: DataSourceOptions, s: ResolvedSharedStorage): DataSource {
  if (options.type !== 'postgres') {
    throw new Error(`storage.dataSource.type must be 'postgres' (got ${JSON.stringify(options.type)})`);
  }
  return new DataSource({
    ...options,
    entities: USAGE_ENTITIES,
    migrations: USAGE_MIGRATIONS,
    migrationsTableName: USAGE_MIGRATIONS_TABLE,
    migrationsRun: false,
    synchronize: false,
    logging: options.logging ?? false,
    applicationName: options.applicationName ?? 'nestjs-usage-monitoring',
    extra: {
      max: s.poolSize,
      connectionTimeoutMillis: s.connectMs,
      statement_timeout: s.statementMs,
      query_timeout: s.statementMs + 500,
      lock_timeout: s.lockMs,
      idle_in_transaction_session_timeout: s.statementMs * 5,
      ...(options.extra as object | undefined),
    },
  });
}

/** Runs the usage migrations once across instances that start together. */
export async function migrate(dataSource: DataSource): Promise<void> {
  const runner = dataSource.createQueryRunner();
  await runner.connect();
  try {
    await runner.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    try {
      await dataSource.runMigrations({ transaction: 'all' });
    } finally {
      await runner.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
    }
  } finally {
    await runner.release();
  }
}

export function poolOf(dataSource: DataSource): PgPool {
  const pool = (dataSource.driver as unknown as { master?: PgPool }).master;
  if (!pool || typeof pool.query !== 'function') {
    throw new Error("storage.dataSource must be a PostgreSQL DataSource ('postgres' driver)");
  }
  return pool;
}
