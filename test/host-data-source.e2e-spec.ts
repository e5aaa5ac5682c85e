import { Controller, Module, Post, UseGuards, UseInterceptors, HttpCode } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import request from 'supertest';
import { DataSource } from 'typeorm';
import {
  Metered,
  MeteringInterceptor,
  USAGE_ENTITIES,
  USAGE_MIGRATIONS,
  UsageLimitGuard,
  UsageMonitoringModule,
} from '@app/usage-monitoring';
import { USAGE_MIGRATIONS_TABLE } from '@app/usage-monitoring/storage/migrations';
import { TEST_PLANS } from './utils/create-test-app';
import { createSchema, describePostgres, dropSchema, pgOptions, withClient } from './utils/test-store';

@Controller('openai')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
class HostController {
  @Post('chat')
  @HttpCode(200)
  @Metered({ provider: 'openai' })
  chat() {
    return { usage: { prompt_tokens: 4, completion_tokens: 2 } };
  }
}

describePostgres('a DataSource the host created with TypeOrmModule', () => {
  it('serves as the shared store when it carries the usage migrations', async () => {
    const schema = await createSchema();
    @Module({
      imports: [
        TypeOrmModule.forRoot({
          ...pgOptions(schema),
          entities: USAGE_ENTITIES,
          migrations: USAGE_MIGRATIONS,
          migrationsTableName: USAGE_MIGRATIONS_TABLE,
          migrationsRun: true,
        }),
        UsageMonitoringModule.forRootAsync({
          inject: [DataSource],
          useFactory: (dataSource: DataSource) => ({
            plans: TEST_PLANS,
            userId: () => 'host-user',
            storage: { type: 'shared', dataSource },
          }),
        }),
      ],
      controllers: [HostController],
    })
    class HostModule {}
    const moduleRef = await Test.createTestingModule({ imports: [HostModule] }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.listen(0, '127.0.0.1');
    try {
      const url = `http://127.0.0.1:${(app.getHttpServer().address() as { port: number }).port}`;
      expect((await request(url).post('/openai/chat').send({})).status).toBe(200);
      const rows = await withClient(
        (c) => c.query('SELECT user_id, input_tokens, output_tokens FROM usage_events'),
        schema,
      );
      expect(rows.rows).toEqual([{ user_id: 'host-user', input_tokens: 4, output_tokens: 2 }]);
    } finally {
      await app.close();
      await dropSchema(schema);
    }
  });

  it('fails start-up with instructions when the usage tables are missing', async () => {
    const schema = await createSchema();
    const dataSource = new DataSource(pgOptions(schema));
    await dataSource.initialize();
    try {
      const moduleRef = await Test.createTestingModule({
        imports: [
          UsageMonitoringModule.forRoot({ plans: TEST_PLANS, storage: { type: 'shared', dataSource } }),
        ],
      }).compile();
      await expect(moduleRef.init()).rejects.toThrow(/usage tables are missing; add USAGE_MIGRATIONS/);
    } finally {
      await dataSource.destroy();
      await dropSchema(schema);
    }
  });

  it('fails start-up with the same instructions when the tables exist but the latest migration has not run', async () => {
    const schema = await createSchema();
    const dataSource = new DataSource({
      ...pgOptions(schema),
      migrations: USAGE_MIGRATIONS.slice(0, -1),
      migrationsTableName: USAGE_MIGRATIONS_TABLE,
    });
    await dataSource.initialize();
    try {
      await dataSource.runMigrations();
      const moduleRef = await Test.createTestingModule({
        imports: [
          UsageMonitoringModule.forRoot({ plans: TEST_PLANS, storage: { type: 'shared', dataSource } }),
        ],
      }).compile();
      await expect(moduleRef.init()).rejects.toThrow(/usage tables are missing; add USAGE_MIGRATIONS/);
    } finally {
      await dataSource.destroy();
      await dropSchema(schema);
    }
  });

  it('refuses a DataSource that is not PostgreSQL, naming the option', async () => {
    const build = Test.createTestingModule({
      imports: [
        UsageMonitoringModule.forRoot({
          plans: TEST_PLANS,
          storage: { type: 'shared', dataSource: { type: 'mysql', host: '127.0.0.1' } },
        }),
      ],
    }).compile();
    await expect(build).rejects.toThrow("storage.dataSource.type must be 'postgres'");
  });
});
