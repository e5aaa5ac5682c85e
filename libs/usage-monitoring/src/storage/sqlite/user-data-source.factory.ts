import { randomBytes } from 'node:crypto';
import { access, copyFile, link, open, readdir, rename, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type * as Sqlite3 from 'sqlite3';
import { DataSource, type DataSourceOptions } from 'typeorm';
import { USAGE_MIGRATIONS, USAGE_MIGRATIONS_TABLE } from '../migrations';
import {
  busyTimeoutFor,
  loadBetterSqlite3,
  loadSqlite3,
  openConnection,
  type SqliteConnection,
  type SqliteDriver,
  wrapConnection,
} from './sqlite-connection';
import { userFileName } from './user-file-name';

/**
 * TypeORM switches `sqlite3` to verbose mode, which wraps every call to capture a stack trace and
 * `util.inspect` its arguments: tens of microseconds per statement. The driver we hand it answers
 * `verbose()` with itself, so statements run unwrapped.
 */
function quiet(sqlite3: typeof Sqlite3): typeof Sqlite3 {
  const driver = Object.defineProperty(Object.create(sqlite3) as typeof Sqlite3, 'verbose', {
    value: () => driver,
  });
  return driver;
}

/** `PRAGMA user_version` of a user database whose schema has every usage migration applied. */
const SCHEMA_VERSION = USAGE_MIGRATIONS.length;

/** The `PRAGMA synchronous` statement of a `storage.synchronous` setting (user files and the journal). */
export function synchronousPragma(synchronous: 'normal' | 'full'): string {
  return `PRAGMA synchronous = ${synchronous === 'full' ? 'FULL' : 'NORMAL'}`;
}

export interface UserDataSourceOptions {
  dataDir: string;
  busyTimeoutMs: number;
  synchronous: 'normal' | 'full';
  /** @default 'sqlite3' */
  driver?: SqliteDriver;
}

/**
 * Builds and initialises one user's TypeORM DataSource (`sqlite3` or `better-sqlite3` driver): WAL, a busy
 * timeout (capped for `better-sqlite3`, whose busy wait blocks the event loop), and the
 * schema brought up to date by the usage migrations before the first query.
 *
 * Opening is on the path of a user's first request (and of every LRU miss), so it stays lean: no
 * entity metadata (this path runs SQL only; `test/schema.e2e-spec.ts` proves the entities match the
 * migrations), and the migrations run only when `PRAGMA user_version` says the file is not current.
 * Measured: ≈ 3 ms of CPU per open and close with both, ≈ 1.2 ms without.
 */
export class UserDataSourceFactory {
  private template: string | undefined;
  readonly driver: SqliteDriver;

  /** The driver package, loaded here so that a missing one fails start-up, not a user's first request. */
  private readonly driverModule: unknown;

  constructor(private readonly options: UserDataSourceOptions) {
    this.driver = options.driver ?? 'sqlite3';
    this.driverModule = this.driver === 'better-sqlite3' ? loadBetterSqlite3() : quiet(loadSqlite3());
  }

  /**
   * Builds (once per schema version) an empty database with every migration applied, inside `dataDir`.
   * A new user's file is a copy of it: creating the schema through the migration runner cost tens of
   * milliseconds per new user, enough for a burst of first requests to run past the enforcement timeout.
   * The template is in WAL mode already, so a new user's first open writes nothing: switching a copy from
   * the rollback journal cost 4 fsyncs per new user (one template of an earlier version is rebuilt).
   */
  async prepareTemplate(): Promise<void> {
    const path = join(this.options.dataDir, `.usage-schema-v${SCHEMA_VERSION}`);
    if (!(await exists(path)) || !(await inWalMode(path))) {
      const building = `${path}.${process.pid}.building`;
      await rm(building, { force: true });
      const ds = await this.open(building);
      await ds.destroy();
      await rename(building, path);
    }
    this.template = path;
    // Templates of other schema versions (left by an earlier release) are never used again.
    for (const name of await readdir(this.options.dataDir)) {
      const version = /^\.usage-schema-v(\d+)$/.exec(name)?.[1];
      if (version !== undefined && Number(version) !== SCHEMA_VERSION)
        await rm(join(this.options.dataDir, name), { force: true });
    }
  }

  /** The file a user's database lives in; always directly inside `dataDir`. */
  filePath(userId: string): string {
    return join(this.options.dataDir, userFileName(userId));
  }

  async create(userId: string): Promise<DataSource> {
    const file = this.filePath(userId);
    if (this.template && !(await exists(file))) await this.copyTemplate(file);
    return this.open(file);
  }

  /**
   * Opens an existing user file with the driver alone (no DataSource): for applying journaled rows to a
   * user this process already opened through `create`, so its schema is current. Never creates a file.
   */
  openFile(userId: string): Promise<SqliteConnection> {
    return openConnection(this.driver, this.filePath(userId), {
      mustExist: true,
      busyTimeoutMs: this.options.busyTimeoutMs,
      pragmas: synchronousPragma(this.options.synchronous),
    });
  }

  /** The driver connection under a DataSource this factory opened, for statements run past TypeORM. */
  connectionOf(dataSource: DataSource): SqliteConnection {
    return wrapConnection(
      this.driver,
      (dataSource.driver as unknown as { databaseConnection: unknown }).databaseConnection,
    );
  }

  /** Copies the template to `file` atomically: a temporary copy linked into place, never overwriting. */
  private async copyTemplate(file: string): Promise<void> {
    const tmp = `${file}.${randomBytes(6).toString('hex')}.new`;
    try {
      await copyFile(this.template!, tmp);
      await link(tmp, file).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }

  private async open(database: string): Promise<DataSource> {
    const common = {
      database,
      entities: [],
      migrations: USAGE_MIGRATIONS,
      migrationsTableName: USAGE_MIGRATIONS_TABLE,
      migrationsRun: false,
      enableWAL: true,
      logging: false,
    };
    const timeout = busyTimeoutFor(this.driver, this.options.busyTimeoutMs);
    const options: DataSourceOptions =
      this.driver === 'better-sqlite3'
        ? { ...common, type: 'better-sqlite3', timeout, driver: this.driverModule }
        : { ...common, type: 'sqlite', busyTimeout: timeout, driver: this.driverModule };
    const dataSource = new DataSource(options);
    try {
      await dataSource.initialize();
      const [{ user_version: version }] =
        await dataSource.query<{ user_version: number }[]>('PRAGMA user_version');
      if (version !== SCHEMA_VERSION) {
        await dataSource.runMigrations({ transaction: 'all' });
        await dataSource.query(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      }
      await dataSource.query(synchronousPragma(this.options.synchronous));
    } catch (e) {
      await closeQuietly(dataSource, this.driver);
      throw e;
    }
    return dataSource;
  }
}

/**
 * Whether `path` exists, asked on the thread pool: a synchronous check waited about 0.2 ms on the main thread
 * in a burst of new users (the directory busy with their files being created).
 */
function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** Whether a database file's header says WAL mode (bytes 18 and 19, the file format's versions, are 2). */
async function inWalMode(path: string): Promise<boolean> {
  const file = await open(path, 'r');
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(20), 0, 20, 0);
    return bytesRead === 20 && buffer[18] === 2 && buffer[19] === 2;
  } finally {
    await file.close();
  }
}

/** Closes a DataSource whatever state a failed initialisation left it in. */
async function closeQuietly(dataSource: DataSource, driver: SqliteDriver): Promise<void> {
  if (dataSource.isInitialized) {
    await dataSource.destroy().catch(() => undefined);
    return;
  }
  const db = (dataSource.driver as unknown as { databaseConnection?: unknown }).databaseConnection;
  if (db)
    await wrapConnection(driver, db)
      .close()
      .catch(() => undefined);
}
