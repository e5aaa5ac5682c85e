import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { AppModule } from './app.module.js';

async function bootstrap(): Promise<void> {
  const app =
    process.env.HTTP_ADAPTER === 'fastify'
      ? await NestFactory.create(AppModule, new FastifyAdapter())
      : await NestFactory.create(AppModule);
  app.enableShutdownHooks();
  await app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
  console.log(`LISTENING ${(app.getHttpServer().address() as { port: number }).port}`);
}

void bootstrap();
