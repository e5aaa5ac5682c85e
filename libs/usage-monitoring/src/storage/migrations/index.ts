import type { MigrationInterface } from 'typeorm';
import { UsageSchema1764201600000 } from './1764201600000-usage-schema';
import { UsageCounterDeltas1764288000000 } from './1764288000000-usage-counter-deltas';
import { UsageSharedBatches1764374400000 } from './1764374400000-usage-shared-batches';
import { UsageEventDetails1764460800000 } from './1764460800000-usage-event-details';
import { UsageReserveBatchInMemory1764547200000 } from './1764547200000-usage-reserve-batch-in-memory';
import { UsageLeases1764633600000 } from './1764633600000-usage-leases';
import { UsageReservationIntent1764806400000 } from './1764806400000-usage-reservation-intent';
import { UsageAlertOutbox1764892800000 } from './1764892800000-usage-alert-outbox';
import { UsageAdjustments1764979200000 } from './1764979200000-usage-adjustments';
import { UsageShadowLimits1765065600000 } from './1765065600000-usage-shadow-limits';
import { UsageKeyedPlans1765152000000 } from './1765152000000-usage-keyed-plans';

/** The usage schema's migrations, oldest first. */
export const USAGE_MIGRATIONS: (new () => MigrationInterface)[] = [
  UsageSchema1764201600000,
  UsageCounterDeltas1764288000000,
  UsageSharedBatches1764374400000,
  UsageEventDetails1764460800000,
  UsageReserveBatchInMemory1764547200000,
  UsageLeases1764633600000,
  UsageReservationIntent1764806400000,
  UsageAlertOutbox1764892800000,
  UsageAdjustments1764979200000,
  UsageShadowLimits1765065600000,
  UsageKeyedPlans1765152000000,
];

/** Name of the table TypeORM records applied usage migrations in. */
export const USAGE_MIGRATIONS_TABLE = 'usage_migrations';
