import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { metrics } from '@opentelemetry/api';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { AppModule } from './app.module.js';

async function bootstrap(): Promise<void> {
  // The OpenTelemetry SDK, registered globally before the app is created: the usage module records into
  // the global meter provider by default. Prometheus scrapes it on METRICS_PORT.
  if (process.env.METRICS_PORT) {
    const exporter = new PrometheusExporter({ host: '127.0.0.1', port: Number(process.env.METRICS_PORT) });
    metrics.setGlobalMeterProvider(new MeterProvider({ readers: [exporter] }));
  }
  const app =
    process.env.HTTP_ADAPTER === 'fastify'
      ? await NestFactory.create(AppModule, new FastifyAdapter())
      : await NestFactory.create(AppModule);
  app.enableShutdownHooks();
  await app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
  console.log(`LISTENING ${(app.getHttpServer().address() as { port: number }).port}`);
}

void bootstrap();
