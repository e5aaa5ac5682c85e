import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { rmSync } from 'node:fs';
import { AppModule } from '../../src/app.module';
import { tempDataDir } from './create-test-app';

export interface DemoApp {
  app: INestApplication;
  url: string;
  dataDir: string;
  close(): Promise<void>;
}

/**
 * Starts the demo app on 127.0.0.1 with its own data directory and these demo keys; with `databaseUrl`,
 * on the shared PostgreSQL store (`USAGE_DATABASE_URL`) instead.
 */
export async function startDemo(
  keys: Record<string, { user: string; plan: string }>,
  { databaseUrl }: { databaseUrl?: string } = {},
): Promise<DemoApp> {
  const dataDir = tempDataDir();
  process.env.USAGE_DATA_DIR = dataDir;
  if (databaseUrl) process.env.USAGE_DATABASE_URL = databaseUrl;
  process.env.DEMO_API_KEYS = JSON.stringify(keys);
  const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.listen(0, '127.0.0.1');
  return {
    app,
    url: `http://127.0.0.1:${(app.getHttpServer().address() as { port: number }).port}`,
    dataDir,
    async close() {
      await app.close();
      delete process.env.USAGE_DATA_DIR;
      delete process.env.USAGE_DATABASE_URL;
      delete process.env.DEMO_API_KEYS;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
