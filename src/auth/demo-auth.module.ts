import { Module } from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import { DEMO_PLANS } from '../plans';
import { DEMO_ADMIN_KEY } from './admin-key.guard';
import { DEMO_KEYS } from './api-key.guard';
import { loadDemoKeys } from './demo-keys';

/**
 * Provides the demo's API keys (from DEMO_API_KEYS, or the two built-in ones) and its admin key (from
 * DEMO_ADMIN_KEY, or a random one printed at start).
 */
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
    {
      provide: DEMO_ADMIN_KEY,
      useFactory: () => process.env.DEMO_ADMIN_KEY || `demo-admin-${randomBytes(12).toString('hex')}`,
    },
  ],
  exports: [DEMO_KEYS, DEMO_ADMIN_KEY],
})
export class DemoAuthModule {}
