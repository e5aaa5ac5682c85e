import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DataSource, type DataSourceOptions } from 'typeorm';
import { USAGE_ENTITIES, USAGE_MIGRATIONS } from '@app/usage-monitoring';
import { USAGE_MIGRATIONS_TABLE } from '@app/usage-monitoring/storage/migrations';
import request from 'supertest';
import { createTestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import {
  createSchema,
  describeSqlite,
  describeStore,
  dropSchema,
  pgOptions,
  SQLITE_DRIVER,
  STORE,
} from './utils/test-store';

describeStore('schema', () => {
  it('the entities describe exactly what the migrations create (no pending schema change)', async () => {
    const schema = STORE === 'postgres' ? await createSchema() : undefined;
    const base: DataSourceOptions = schema
      ? pgOptions(schema)
      : SQLITE_DRIVER === 'better-sqlite3'
        ? { type: 'better-sqlite3', database: ':memory:' }
        : { type: 'sqlite', database: ':memory:' };
    const ds = new DataSource({
      ...base,
      entities: USAGE_ENTITIES,
      migrations: USAGE_MIGRATIONS,
      migrationsTableName: USAGE_MIGRATIONS_TABLE,
    });
    await ds.initialize();
    try {
      const applied = await ds.runMigrations();
      expect(applied.map((m) => m.name)).toEqual(USAGE_MIGRATIONS.map((M) => new M().name));
      const pending = await ds.driver.createSchemaBuilder().log();
      expect(pending.upQueries.map((q) => q.query)).toEqual([]);
      if (!schema) {
        // The trigger that writes request rows and counter deltas with each ledger row, on either driver.
        const triggers = await ds.query<{ name: string }[]>(
          "SELECT name FROM sqlite_master WHERE type = 'trigger'",
        );
        expect(triggers.map((t) => t.name)).toEqual(['usage_events_apply']);
      }
      // Running them again changes nothing.
      expect(await ds.runMigrations()).toEqual([]);
    } finally {
      await ds.destroy();
      if (schema) await dropSchema(schema);
    }
  });
});

describeSqlite('schema template (per-user SQLite)', () => {
  it('start-up builds the template of the current schema version and removes those of other versions', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'usage-template-'));
    writeFileSync(join(dataDir, '.usage-schema-v1'), 'a template an earlier release left');
    writeFileSync(join(dataDir, '.usage-schema-notes'), 'not a template: kept');
    const t = await createTestApp({ usage: { storage: { dataDir } } });
    try {
      expect(
        readdirSync(dataDir)
          .filter((n) => n.startsWith('.usage-schema'))
          .sort(),
      ).toEqual(['.usage-schema-notes', `.usage-schema-v${USAGE_MIGRATIONS.length}`]);
    } finally {
      await t.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('the template is in WAL mode (a new file needs no journal switch), and one left in rollback mode is rebuilt', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'usage-template-'));
    const template = join(dataDir, `.usage-schema-v${USAGE_MIGRATIONS.length}`);
    // Bytes 18 and 19 of a SQLite header: 2 in WAL mode, 1 with a rollback journal.
    const mode = (file: string) => [...readFileSync(file).subarray(18, 20)];
    try {
      const first = await createTestApp({ usage: { storage: { dataDir } } });
      await first.close();
      expect(mode(template)).toEqual([2, 2]);
      // As an earlier release left it: the same schema, a rollback journal.
      const ds = new DataSource({ type: 'sqlite', database: template });
      await ds.initialize();
      await ds.query('PRAGMA journal_mode = DELETE');
      await ds.destroy();
      expect(mode(template)).toEqual([1, 1]);
      const t = await createTestApp({ usage: { storage: { dataDir } } });
      try {
        expect(mode(template)).toEqual([2, 2]);
        const res = await request(t.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer('after-rebuild'))
          .send({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
        expect(res.status).toBe(200);
        const rows = await queryUserDb<{ n: number }>(
          t,
          'after-rebuild',
          'SELECT COUNT(*) AS n FROM usage_events',
        );
        expect(rows[0].n).toBe(1);
      } finally {
        await t.close();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
