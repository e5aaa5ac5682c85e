import { Controller, Get, Module, Req, Res, type OnApplicationShutdown, Inject } from '@nestjs/common';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** The demo's OpenTelemetry meter provider; the usage module records into it (`metrics.meterProvider`). */
export const DEMO_METER_PROVIDER = Symbol('DEMO_METER_PROVIDER');
const DEMO_PROMETHEUS = Symbol('DEMO_PROMETHEUS');

/** `GET /metrics`: what the OpenTelemetry SDK collected, in Prometheus' text format. */
@Controller('metrics')
export class MetricsController {
  constructor(@Inject(DEMO_PROMETHEUS) private readonly exporter: PrometheusExporter) {}

  @Get()
  scrape(@Req() req: IncomingMessage, @Res() res: ServerResponse): void {
    this.exporter.getMetricsRequestHandler(req, res);
  }
}

/**
 * The OpenTelemetry metrics SDK with its Prometheus exporter, served by the app itself rather than on
 * the exporter's own port. An app that already runs the SDK (NodeSDK) needs none of this: the usage
 * module records into the global meter provider by default.
 */
@Module({
  controllers: [MetricsController],
  providers: [
    { provide: DEMO_PROMETHEUS, useFactory: () => new PrometheusExporter({ preventServerStart: true }) },
    {
      provide: DEMO_METER_PROVIDER,
      useFactory: (exporter: PrometheusExporter) => new MeterProvider({ readers: [exporter] }),
      inject: [DEMO_PROMETHEUS],
    },
  ],
  exports: [DEMO_METER_PROVIDER],
})
export class DemoMetricsModule implements OnApplicationShutdown {
  constructor(@Inject(DEMO_METER_PROVIDER) private readonly provider: MeterProvider) {}

  async onApplicationShutdown(): Promise<void> {
    await this.provider.shutdown();
  }
}
