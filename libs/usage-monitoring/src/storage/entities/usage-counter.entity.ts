import { Column, Entity, PrimaryColumn } from 'typeorm';
import { bigintAsNumber } from './bigint.transformer';

/** Pre-aggregated usage per user, period, scope and metric: what limits are checked against. */
@Entity('usage_counters')
export class UsageCounterEntity {
  @PrimaryColumn({ name: 'user_id', type: 'varchar', length: 1024 })
  userId!: string;

  @PrimaryColumn({ name: 'period_key', type: 'varchar', length: 40 })
  periodKey!: string;

  @PrimaryColumn({ type: 'varchar', length: 128 })
  scope!: string;

  @PrimaryColumn({ type: 'varchar', length: 16 })
  metric!: string;

  @Column({ type: 'bigint', default: 0, transformer: bigintAsNumber })
  used!: number;

  @Column({ type: 'bigint', default: 0, transformer: bigintAsNumber })
  reserved!: number;

  /** Granted by an admin on top of the limit for this period (shared store; 0 in per-user files). */
  @Column({ type: 'bigint', default: 0, transformer: bigintAsNumber })
  granted!: number;

  /** Usage an admin's reset took off this period (shared store; 0 in per-user files). */
  @Column({ type: 'bigint', default: 0, transformer: bigintAsNumber })
  forgiven!: number;

  @Column({ name: 'period_end', type: 'bigint', transformer: bigintAsNumber })
  periodEnd!: number;

  @Column({ name: 'updated_at', type: 'bigint', transformer: bigintAsNumber })
  updatedAt!: number;
}
