import { Client } from 'pg';

/**
 * Checks once whether PostgreSQL answers on 127.0.0.1:5432. Without it the shared-store tests are
 * skipped with a visible message, unless USAGE_TEST_REQUIRE_POSTGRES is set (CI), where it fails the run.
 */
export default async function globalSetup(): Promise<void> {
  const client = new Client({
    host: '127.0.0.1',
    port: 5432,
    user: 'postgres',
    database: 'test',
    connectionTimeoutMillis: 2000,
  });
  try {
    await client.connect();
    await client.query('SELECT 1');
    process.env.USAGE_TEST_PG = 'up';
  } catch (e) {
    process.env.USAGE_TEST_PG = 'down';
    if (process.env.USAGE_TEST_REQUIRE_POSTGRES) {
      throw new Error(
        `PostgreSQL is required (USAGE_TEST_REQUIRE_POSTGRES) but 127.0.0.1:5432 did not answer: ${(e as Error).message}`,
      );
    }
    console.warn(
      `\n*** PostgreSQL did not answer on 127.0.0.1:5432 (${(e as Error).message}): the shared-store tests are SKIPPED. ***\n`,
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}
