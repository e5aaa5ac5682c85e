import { ApiRequestEntity } from './api-request.entity';
import { UsageAlertEntity } from './usage-alert.entity';
import { UsageCounterEntity } from './usage-counter.entity';
import { UsageEventEntity } from './usage-event.entity';
import { UsageReservationEntity } from './usage-reservation.entity';

/** Every entity of the usage schema, for a DataSource's `entities`. */
export const USAGE_ENTITIES: (new () => object)[] = [
  UsageCounterEntity,
  UsageEventEntity,
  ApiRequestEntity,
  UsageAlertEntity,
  UsageReservationEntity,
];

export { ApiRequestEntity, UsageAlertEntity, UsageCounterEntity, UsageEventEntity, UsageReservationEntity };
