import { Column, Entity, Index, PrimaryColumn } from 'typeorm';
import { bigintAsNumber } from './bigint.transformer';

/**
 * Reservations written to the database (shared mode, and durable intent). In per-user SQLite mode
 * open reservations live in memory, since one process owns the data.
 */
@Entity('usage_reservations')
@Index('idx_usage_reservations_expiry', ['status', 'expiresAt'])
export class UsageReservationEntity {
  @PrimaryColumn({ name: 'request_id', type: 'varchar', length: 64 })
  requestId!: string;

  @Column({ name: 'user_id', type: 'varchar', length: 1024 })
  userId!: string;

  @Column({ type: 'varchar', length: 64 })
  provider!: string;

  @Column({ name: 'period_key', type: 'varchar', length: 40 })
  periodKey!: string;

  /** JSON array of the charges reserved. */
  @Column({ type: 'text' })
  charges!: string;

  @Column({ type: 'varchar', length: 16 })
  status!: string;

  @Column({ name: 'created_at', type: 'bigint', transformer: bigintAsNumber })
  createdAt!: number;

  @Column({ name: 'expires_at', type: 'bigint', transformer: bigintAsNumber })
  expiresAt!: number;

  /** Durable intent: the settlement that charges the request at its estimate if it never settles (JSON). */
  @Column({ type: 'text', nullable: true })
  interrupted!: string | null;
}
