/** Jest setup of the `e2e-better-sqlite3` project: per-user SQLite through `storage.driver: 'better-sqlite3'`. */
process.env.USAGE_TEST_SQLITE_DRIVER = 'better-sqlite3';
