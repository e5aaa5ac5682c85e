import { Module } from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import type { MeterProvider } from '@opentelemetry/sdk-metrics';
import { UsageMonitoringModule } from '@app/usage-monitoring';
import { ArticlesController } from './articles/articles.controller';
import { ArticlesService } from './articles/articles.service';
import { AdminKeyGuard } from './auth/admin-key.guard';
import { ApiKeyGuard, DEMO_KEYS } from './auth/api-key.guard';
import { DemoAuthModule } from './auth/demo-auth.module';
import { SignedInGuard } from './auth/signed-in.guard';
import type { DemoKey } from './auth/demo-keys';
import { HelloController } from './hello.controller';
import { DEMO_PLANS } from './plans';
import { DEMO_METER_PROVIDER, DemoMetricsModule } from './telemetry/demo-metrics.module';
import { AnthropicController } from './providers/anthropic.controller';
import { GeminiController } from './providers/gemini.controller';
import { OpenAiController } from './providers/openai.controller';
import { TavilyController } from './providers/tavily.controller';
import { UsageController } from './usage.controller';

/** The demo: composition only. Every metering and enforcement behaviour comes from the library. */
@Module({
  imports: [
    DemoAuthModule,
    DemoMetricsModule,
    UsageMonitoringModule.forRootAsync({
      imports: [DemoAuthModule, DemoMetricsModule],
      // The admin API (grants, resets, limit overrides) at /usage/admin, behind the demo's admin key.
      adminController: { guards: [AdminKeyGuard] },
      // The dashboard: each user's own page at /usage/dashboard, the operator's at /usage/dashboard/admin.
      dashboard: { guards: [SignedInGuard] },
      inject: [DEMO_KEYS, DEMO_METER_PROVIDER],
      useFactory: (keys: Map<string, DemoKey>, meterProvider: MeterProvider) => {
        const planOf = new Map([...keys.values()].map((k) => [k.user, k.plan]));
        return {
          plans: DEMO_PLANS,
          plan: (userId: string) => planOf.get(userId),
          // USAGE_DATABASE_URL switches to the shared PostgreSQL store (several instances, one set of limits).
          storage: process.env.USAGE_DATABASE_URL
            ? { type: 'shared', dataSource: { type: 'postgres', url: process.env.USAGE_DATABASE_URL } }
            : { dataDir: process.env.USAGE_DATA_DIR ?? './data' },
          // GET /metrics (DemoMetricsModule) serves what is recorded here.
          metrics: { meterProvider },
          // Threshold alerts (80/90/100 %) POSTed, signed, to a receiver of yours.
          alerts: process.env.USAGE_ALERT_WEBHOOK_URL
            ? {
                webhook: {
                  url: process.env.USAGE_ALERT_WEBHOOK_URL,
                  secret: process.env.USAGE_ALERT_WEBHOOK_SECRET ?? '',
                },
              }
            : undefined,
        };
      },
    }),
  ],
  controllers: [
    OpenAiController,
    AnthropicController,
    GeminiController,
    TavilyController,
    HelloController,
    UsageController,
    ArticlesController,
  ],
  providers: [{ provide: APP_GUARD, useClass: ApiKeyGuard }, ArticlesService],
})
export class AppModule {}
