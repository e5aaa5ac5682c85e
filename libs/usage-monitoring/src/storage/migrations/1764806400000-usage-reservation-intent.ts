import { TableColumn, type MigrationInterface, type QueryRunner } from 'typeorm';
import { RESERVE_BATCH_IN_MEMORY } from './1764547200000-usage-reserve-batch-in-memory';

const INSERT_BEFORE = `INSERT INTO usage_reservations (request_id, user_id, provider, period_key, charges, status, created_at, expires_at)
        SELECT x.id, x.u, x.provider, x.pk, x.charges::text, 'open', p_now, x.expires
        FROM jsonb_to_recordset(p_requests) AS x(id text, u text, provider text, pk text, charges jsonb, expires bigint)`;
const INSERT_AFTER = `INSERT INTO usage_reservations (request_id, user_id, provider, period_key, charges, status, created_at, expires_at, interrupted)
        SELECT x.id, x.u, x.provider, x.pk, x.charges::text, 'open', p_now, x.expires, x.intent::text
        FROM jsonb_to_recordset(p_requests) AS x(id text, u text, provider text, pk text, charges jsonb, expires bigint, intent jsonb)`;

/** `usage_reserve_batch` as this migration installs it (a later migration derives its successor from it). */
export const RESERVE_BATCH_WITH_INTENT = RESERVE_BATCH_IN_MEMORY.replace(INSERT_BEFORE, INSERT_AFTER);

/**
 * Durable intent in the shared store: each reservation row may carry `interrupted`, the settlement that
 * charges its request at the estimate (JSON, as the settle statement takes it). The sweeper settles an
 * expired reservation with it (its instance died mid-request) instead of releasing it. `usage_reserve_batch`
 * writes the column from each request's `intent`; its decisions are unchanged.
 */
export class UsageReservationIntent1764806400000 implements MigrationInterface {
  name = 'UsageReservationIntent1764806400000';

  async up(q: QueryRunner): Promise<void> {
    await q.addColumn(
      'usage_reservations',
      new TableColumn({ name: 'interrupted', type: 'text', isNullable: true }),
    );
    if (q.connection.options.type !== 'postgres') return;
    if (!RESERVE_BATCH_IN_MEMORY.includes(INSERT_BEFORE))
      throw new Error('usage_reserve_batch: unexpected text');
    await q.query(RESERVE_BATCH_WITH_INTENT);
  }

  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type === 'postgres') await q.query(RESERVE_BATCH_IN_MEMORY);
    await q.dropColumn('usage_reservations', 'interrupted');
  }
}
