import { DataSource, type DataSourceOptions } from 'typeorm';
import { USAGE_ENTITIES, USAGE_MIGRATIONS, USAGE_MIGRATIONS_TABLE } from '@app/usage-monitoring';
import { createSchema, describeStore, dropSchema, pgOptions, SQLITE_DRIVER, STORE } from './utils/test-store';

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
