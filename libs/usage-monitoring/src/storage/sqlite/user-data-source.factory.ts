import { join } from 'node:path';
import * as sqlite3 from 'sqlite3';
import { DataSource } from 'typeorm';
import { USAGE_ENTITIES } from '../entities';
import { USAGE_MIGRATIONS, USAGE_MIGRATIONS_TABLE } from '../migrations';
import { userFileName } from './user-file-name';

/**
 * TypeORM switches `sqlite3` to verbose mode, which wraps every call to capture a stack trace and
 * `util.inspect` its arguments: tens of microseconds per statement. The driver we hand it answers
 * `verbose()` with itself, so statements run unwrapped.
 */
const QUIET_SQLITE3 = Object.defineProperty(Object.create(sqlite3) as typeof sqlite3, 'verbose', {
  value: () => QUIET_SQLITE3,
});

export interface UserDataSourceOptions {
  dataDir: string;
  busyTimeoutMs: number;
  synchronous: 'normal' | 'full';
}

/**
 * Builds and initialises one user's TypeORM DataSource (`sqlite3` driver): WAL, a busy timeout, and the
 * schema brought up to date by the usage migrations before the first query.
 */
export class UserDataSourceFactory {
  constructor(private readonly options: UserDataSourceOptions) {}

  /** The file a user's database lives in; always directly inside `dataDir`. */
  filePath(userId: string): string {
    return join(this.options.dataDir, userFileName(userId));
  }

  async create(userId: string): Promise<DataSource> {
    const dataSource = new DataSource({
      type: 'sqlite',
      database: this.filePath(userId),
      entities: USAGE_ENTITIES,
      migrations: USAGE_MIGRATIONS,
      migrationsTableName: USAGE_MIGRATIONS_TABLE,
      migrationsRun: true,
      migrationsTransactionMode: 'all',
      enableWAL: true,
      busyTimeout: this.options.busyTimeoutMs,
      driver: QUIET_SQLITE3,
      logging: false,
    });
    try {
      await dataSource.initialize();
      await dataSource.query(
        `PRAGMA synchronous = ${this.options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`,
      );
    } catch (e) {
      await closeQuietly(dataSource);
      throw e;
    }
    return dataSource;
  }
}

/** Closes a DataSource whatever state a failed initialisation left it in. */
async function closeQuietly(dataSource: DataSource): Promise<void> {
  if (dataSource.isInitialized) {
    await dataSource.destroy().catch(() => undefined);
    return;
  }
  const db = (dataSource.driver as unknown as { databaseConnection?: { close(cb: () => void): void } })
    .databaseConnection;
  if (db) await new Promise<void>((resolve) => db.close(() => resolve()));
}
