import { Module } from '@nestjs/common';
import { DEMO_PLANS } from '../plans';
import { DEMO_KEYS } from './api-key.guard';
import { loadDemoKeys } from './demo-keys';

/** Provides the demo's API keys (from DEMO_API_KEYS, or the two built-in ones). */
@Module({
  providers: [
    {
      provide: DEMO_KEYS,
      useFactory: () =>
        loadDemoKeys(
          process.env.DEMO_API_KEYS,
          DEMO_PLANS.map((p) => p.name),
        ),
    },
  ],
  exports: [DEMO_KEYS],
})
export class DemoAuthModule {}
