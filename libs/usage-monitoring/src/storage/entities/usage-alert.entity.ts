import { Column, Entity, PrimaryColumn } from 'typeorm';
import { bigintAsNumber } from './bigint.transformer';

/** One row per user, period, limit and threshold: the proof an alert fired once. */
@Entity('usage_alerts')
export class UsageAlertEntity {
  @PrimaryColumn({ name: 'user_id', type: 'varchar', length: 1024 })
  userId!: string;

  @PrimaryColumn({ name: 'period_key', type: 'varchar', length: 40 })
  periodKey!: string;

  @PrimaryColumn({ name: 'limit_id', type: 'varchar', length: 200 })
  limitId!: string;

  @PrimaryColumn({ type: 'integer' })
  threshold!: number;

  @Column({ type: 'bigint', transformer: bigintAsNumber })
  used!: number;

  @Column({ name: 'max_value', type: 'bigint', transformer: bigintAsNumber })
  max!: number;

  @Column({ name: 'created_at', type: 'bigint', transformer: bigintAsNumber })
  createdAt!: number;
}
