import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openConnection, type SqliteDriver } from './sqlite-connection';

describe.each<SqliteDriver>(['sqlite3', 'better-sqlite3'])('SqliteConnection over %s', (driver) => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'usage-conn-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('runs bound statements, returns rowids and rows, and rejects (not throws) on SQL errors', async () => {
    const db = await openConnection(driver, join(dir, 'a.sqlite'), {
      mustExist: false,
      busyTimeoutMs: 100,
      pragmas: 'PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)',
    });
    const insert = 'INSERT INTO t (v) SELECT value FROM json_each(?) WHERE true';
    expect(await db.run(insert, [JSON.stringify(['a', 'b', 'c'])])).toBe(3);
    const failed = db.run(insert, [JSON.stringify(['d', 'a'])]); // UNIQUE: the statement fails whole
    await expect(failed).rejects.toThrow(/UNIQUE constraint failed/);
    // The same SQL text is prepared again after a failure and works.
    expect(await db.run(insert, [JSON.stringify(['d'])])).toBe(4);
    expect(await db.all<{ v: string }>('SELECT v FROM t WHERE id > ? ORDER BY id', [1])).toEqual([
      { v: 'b' },
      { v: 'c' },
      { v: 'd' },
    ]);
    await expect(db.exec('SELECT * FROM missing')).rejects.toThrow(/no such table/);
    await db.close();
  });

  it('never creates a file it was told must exist', async () => {
    const file = join(dir, 'absent.sqlite');
    const opening = openConnection(driver, file, {
      mustExist: true,
      busyTimeoutMs: 100,
      pragmas: 'PRAGMA synchronous = NORMAL',
    });
    // Matched by message: under Jest, better-sqlite3's error class may come from another test file's
    // realm (its native addon keeps the first one it was given), so it is not `instanceof Error` here.
    await expect(opening).rejects.toMatchObject({
      message: expect.stringContaining('unable to open database file') as string,
    });
    expect(existsSync(file)).toBe(false);
  });
});

describe('loading the optional driver packages', () => {
  it.each([
    ['sqlite3', 'loadSqlite3'],
    ['better-sqlite3', 'loadBetterSqlite3'],
  ] as const)('names the option and the package when %s is not installed', (driver, loader) => {
    jest.isolateModules(() => {
      jest.doMock(driver, () => {
        throw Object.assign(new Error(`Cannot find module '${driver}'`), { code: 'MODULE_NOT_FOUND' });
      });
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const loaders = require('./sqlite-connection') as typeof import('./sqlite-connection');
      expect(() => loaders[loader]()).toThrow(
        `storage.driver '${driver}' (the per-user SQLite store, storage.type 'sqlite', is the default) ` +
          `needs the ${driver} package: npm install ${driver}. Or use the other driver (storage.driver), ` +
          `or the shared PostgreSQL store (storage: { type: 'shared', dataSource }).`,
      );
    });
  });

  it('passes on the reason when the package is installed but cannot load', () => {
    jest.isolateModules(() => {
      jest.doMock('sqlite3', () => {
        throw new Error('node_sqlite3.node: invalid ELF header');
      });
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { loadSqlite3 } = require('./sqlite-connection') as typeof import('./sqlite-connection');
      expect(() => loadSqlite3()).toThrow(
        'needs the sqlite3 package: it failed to load: node_sqlite3.node: invalid ELF header.',
      );
    });
  });
});
