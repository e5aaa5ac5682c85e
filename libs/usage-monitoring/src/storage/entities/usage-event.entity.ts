import { Column, Entity, Index, PrimaryColumn } from 'typeorm';
import { bigintAsNumber } from './bigint.transformer';

/** The append-only ledger: one row per metered request id. */
@Entity('usage_events')
@Index('idx_usage_events_user_time', ['userId', 'occurredAt'])
export class UsageEventEntity {
  @PrimaryColumn({ name: 'request_id', type: 'varchar', length: 64 })
  requestId!: string;

  @Column({ name: 'user_id', type: 'varchar', length: 1024 })
  userId!: string;

  @Column({ type: 'varchar', length: 64 })
  provider!: string;

  @Column({ type: 'varchar', length: 128, nullable: true })
  model!: string | null;

  @Column({ type: 'varchar', length: 512 })
  endpoint!: string;

  @Column({ type: 'varchar', length: 16 })
  method!: string;

  @Column({ name: 'status_code', type: 'integer' })
  statusCode!: number;

  @Column({ name: 'input_tokens', type: 'bigint', transformer: bigintAsNumber })
  inputTokens!: number;

  @Column({ name: 'output_tokens', type: 'bigint', transformer: bigintAsNumber })
  outputTokens!: number;

  /** Input tokens read from a prompt cache (inside `input_tokens`). */
  @Column({ name: 'cached_input_tokens', type: 'bigint', default: 0, transformer: bigintAsNumber })
  cachedInputTokens!: number;

  /** Input tokens written to a prompt cache (inside `input_tokens`). */
  @Column({ name: 'cache_write_tokens', type: 'bigint', default: 0, transformer: bigintAsNumber })
  cacheWriteTokens!: number;

  /** Reasoning ("thinking") tokens (inside `output_tokens`). */
  @Column({ name: 'reasoning_tokens', type: 'bigint', default: 0, transformer: bigintAsNumber })
  reasoningTokens!: number;

  /** The price that priced this row: `genai-prices@<version>:<model>`, `options:<hash>:<name>` or `builtin:<name>`. */
  @Column({ name: 'price_version', type: 'varchar', length: 160, nullable: true })
  priceVersion!: string | null;

  @Column({ name: 'cost_micros', type: 'bigint', transformer: bigintAsNumber })
  costMicros!: number;

  @Column({ name: 'response_time_ms', type: 'integer' })
  responseTimeMs!: number;

  @Column({ name: 'request_bytes', type: 'integer' })
  requestBytes!: number;

  @Column({ name: 'response_bytes', type: 'integer' })
  responseBytes!: number;

  @Column({ name: 'user_agent', type: 'varchar', length: 512, nullable: true })
  userAgent!: string | null;

  @Column({ type: 'varchar', length: 64, nullable: true })
  ip!: string | null;

  @Column({ type: 'integer' })
  searches!: number;

  @Column({ type: 'integer' })
  images!: number;

  @Column({ type: 'integer' })
  pages!: number;

  @Column({ type: 'boolean' })
  estimated!: boolean;

  @Column({ type: 'varchar', length: 16 })
  outcome!: string;

  /** The shadow limit that would have refused this request (`scope:metric:period:shadow`), or null. */
  @Column({ name: 'shadow_refused', type: 'varchar', length: 160, nullable: true })
  shadowRefused!: string | null;

  @Column({ name: 'period_key', type: 'varchar', length: 40 })
  periodKey!: string;

  @Column({ name: 'occurred_at', type: 'bigint', transformer: bigintAsNumber })
  occurredAt!: number;

  /**
   * SQLite store: counter deltas applied by the trigger with this row, summed over its write batch (JSON
   * `[{ p: periodKey, s: scope, m: metric, a: amount, e: periodEnd }]`); NULL on the other rows of the batch.
   */
  @Column({ name: 'counter_deltas', type: 'text', nullable: true })
  counterDeltas!: string | null;
}
