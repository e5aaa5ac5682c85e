import { Module } from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import { UsageMonitoringModule, type StorageOptions } from 'nestjs-usage-monitoring';
import { AdminGuard, AuthGuard, SignedInGuard } from './auth.guard.js';
import { ChatController } from './chat.controller.js';
import { SummaryController } from './summary.controller.js';
import { SummaryService } from './summary.service.js';

/** `USAGE_DATABASE_URL` set: the shared PostgreSQL store; otherwise one SQLite file per user. */
const storage: StorageOptions = process.env.USAGE_DATABASE_URL
  ? { type: 'shared', dataSource: { type: 'postgres', url: process.env.USAGE_DATABASE_URL } }
  : { dataDir: process.env.USAGE_DATA_DIR ?? './data' };

@Module({
  imports: [
    UsageMonitoringModule.forRoot({
      plans: [{ name: 'starter', limits: [{ metric: 'calls', scope: 'openai', period: 'month', max: 5 }] }],
      storage,
      // Grants, resets, limit overrides and who is spending at /usage/admin, for the app's admin only.
      adminController: { guards: [AdminGuard] },
      // The usage dashboard: /usage/dashboard for each signed-in user, /usage/dashboard/admin for the admin.
      dashboard: { guards: [SignedInGuard] },
    }),
  ],
  controllers: [ChatController, SummaryController],
  providers: [{ provide: APP_GUARD, useClass: AuthGuard }, SummaryService],
})
export class AppModule {}
