import { Module } from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import { UsageMonitoringModule } from '@app/usage-monitoring';
import { ApiKeyGuard, DEMO_KEYS } from './auth/api-key.guard';
import { DemoAuthModule } from './auth/demo-auth.module';
import type { DemoKey } from './auth/demo-keys';
import { HelloController } from './hello.controller';
import { DEMO_PLANS } from './plans';
import { AnthropicController } from './providers/anthropic.controller';
import { GeminiController } from './providers/gemini.controller';
import { OpenAiController } from './providers/openai.controller';
import { TavilyController } from './providers/tavily.controller';
import { UsageController } from './usage.controller';

/** The demo: composition only. Every metering and enforcement behaviour comes from the library. */
@Module({
  imports: [
    DemoAuthModule,
    UsageMonitoringModule.forRootAsync({
      imports: [DemoAuthModule],
      inject: [DEMO_KEYS],
      useFactory: (keys: Map<string, DemoKey>) => {
        const planOf = new Map([...keys.values()].map((k) => [k.user, k.plan]));
        return {
          plans: DEMO_PLANS,
          plan: (userId: string) => planOf.get(userId),
          // USAGE_DATABASE_URL switches to the shared PostgreSQL store (several instances, one set of limits).
          storage: process.env.USAGE_DATABASE_URL
            ? { type: 'shared', dataSource: { type: 'postgres', url: process.env.USAGE_DATABASE_URL } }
            : { dataDir: process.env.USAGE_DATA_DIR ?? './data' },
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
  ],
  providers: [{ provide: APP_GUARD, useClass: ApiKeyGuard }],
})
export class AppModule {}
