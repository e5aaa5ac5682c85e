import { Column, Entity, Index, PrimaryColumn } from 'typeorm';
import { bigintAsNumber } from './bigint.transformer';

/** Per-request monitoring rows: every metered request, and identified unmetered ones with `recordAllRequests`. */
@Entity('api_requests')
@Index('idx_api_requests_user_time', ['userId', 'occurredAt'])
export class ApiRequestEntity {
  @PrimaryColumn({ name: 'request_id', type: 'varchar', length: 64 })
  requestId!: string;

  @Column({ name: 'user_id', type: 'varchar', length: 1024 })
  userId!: string;

  @Column({ type: 'varchar', length: 64, nullable: true })
  provider!: string | null;

  @Column({ type: 'varchar', length: 512 })
  path!: string;

  @Column({ type: 'varchar', length: 16 })
  method!: string;

  @Column({ name: 'status_code', type: 'integer' })
  statusCode!: number;

  @Column({ name: 'duration_ms', type: 'integer' })
  durationMs!: number;

  @Column({ name: 'occurred_at', type: 'bigint', transformer: bigintAsNumber })
  occurredAt!: number;
}
