import { DataSource, type DataSourceOptions } from 'typeorm';
import { USAGE_ENTITIES, USAGE_MIGRATIONS, USAGE_MIGRATIONS_TABLE } from '@app/usage-monitoring';
import { createSchema, describeStore, dropSchema, pgOptions, STORE } from './utils/test-store';

describeStore('schema', () => {
  it('the entities describe exactly what the migrations create (no pending schema change)', async () => {
    const schema = STORE === 'postgres' ? await createSchema() : undefined;
    const base: DataSourceOptions = schema ? pgOptions(schema) : { type: 'sqlite', database: ':memory:' };
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
      // Running them again changes nothing.
      expect(await ds.runMigrations()).toEqual([]);
    } finally {
      await ds.destroy();
      if (schema) await dropSchema(schema);
    }
  });
});
