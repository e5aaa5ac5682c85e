import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { AppModule } from './app.module';
import { DEMO_ADMIN_KEY } from './auth/admin-key.guard';
import { DEMO_KEYS } from './auth/api-key.guard';
import type { DemoKey } from './auth/demo-keys';

async function bootstrap(): Promise<void> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule);
  // Bodies over the limit are refused with 413 by the parser, before any usage is reserved.
  app.useBodyParser('json', { limit: process.env.BODY_LIMIT ?? '1mb' });
  app.enableShutdownHooks();
  const port = Number(process.env.PORT ?? 3000);
  await app.listen(port);
  const logger = new Logger('Demo');
  const keys = app.get<Map<string, DemoKey>>(DEMO_KEYS);
  logger.log(`listening on http://localhost:${port}`);
  if (!process.env.DEMO_API_KEYS) {
    for (const [key, k] of keys) logger.log(`demo key ${key} → user ${k.user} (plan ${k.plan})`);
  } else {
    logger.log(`${keys.size} key(s) loaded from DEMO_API_KEYS`);
  }
  if (!process.env.DEMO_ADMIN_KEY)
    logger.log(`demo admin key ${app.get<string>(DEMO_ADMIN_KEY)} → /usage/admin (header x-admin-key)`);
  logger.log(
    `dashboard: http://localhost:${port}/usage/dashboard (your usage: header Authorization: Bearer <demo key>), ` +
      `http://localhost:${port}/usage/dashboard/admin (operator: header x-admin-key)`,
  );
}

void bootstrap();
