import { Table, TableIndex, type MigrationInterface, type QueryRunner } from 'typeorm';

const userId = { name: 'user_id', type: 'varchar', length: '1024' };
const bigint = (name: string, extra: object = {}) => ({ name, type: 'bigint', ...extra });
const int = (name: string) => ({ name, type: 'integer' });
const str = (name: string, length: number, extra: object = {}) => ({
  name,
  type: 'varchar',
  length: String(length),
  ...extra,
});

/**
 * The usage schema, written with the QueryRunner API so one migration serves SQLite and PostgreSQL.
 */
export class UsageSchema1764201600000 implements MigrationInterface {
  name = 'UsageSchema1764201600000';

  async up(q: QueryRunner): Promise<void> {
    await q.createTable(
      new Table({
        name: 'usage_counters',
        columns: [
          { ...userId, isPrimary: true },
          str('period_key', 40, { isPrimary: true }),
          str('scope', 128, { isPrimary: true }),
          str('metric', 16, { isPrimary: true }),
          bigint('used', { default: 0 }),
          bigint('reserved', { default: 0 }),
          bigint('period_end'),
          bigint('updated_at'),
        ],
      }),
    );
    await q.createTable(
      new Table({
        name: 'usage_events',
        columns: [
          str('request_id', 64, { isPrimary: true }),
          userId,
          str('provider', 64),
          str('model', 128, { isNullable: true }),
          str('endpoint', 512),
          str('method', 16),
          int('status_code'),
          bigint('input_tokens'),
          bigint('output_tokens'),
          bigint('cost_micros'),
          int('response_time_ms'),
          int('request_bytes'),
          int('response_bytes'),
          str('user_agent', 512, { isNullable: true }),
          str('ip', 64, { isNullable: true }),
          int('searches'),
          int('images'),
          int('pages'),
          { name: 'estimated', type: 'boolean' },
          str('outcome', 16),
          str('period_key', 40),
          bigint('occurred_at'),
        ],
        indices: [
          new TableIndex({ name: 'idx_usage_events_user_time', columnNames: ['user_id', 'occurred_at'] }),
        ],
      }),
    );
    await q.createTable(
      new Table({
        name: 'api_requests',
        columns: [
          str('request_id', 64, { isPrimary: true }),
          userId,
          str('provider', 64, { isNullable: true }),
          str('path', 512),
          str('method', 16),
          int('status_code'),
          int('duration_ms'),
          bigint('occurred_at'),
        ],
        indices: [
          new TableIndex({ name: 'idx_api_requests_user_time', columnNames: ['user_id', 'occurred_at'] }),
        ],
      }),
    );
    await q.createTable(
      new Table({
        name: 'usage_alerts',
        columns: [
          { ...userId, isPrimary: true },
          str('period_key', 40, { isPrimary: true }),
          str('limit_id', 200, { isPrimary: true }),
          { name: 'threshold', type: 'integer', isPrimary: true },
          bigint('used'),
          bigint('max_value'),
          bigint('created_at'),
        ],
      }),
    );
    await q.createTable(
      new Table({
        name: 'usage_reservations',
        columns: [
          str('request_id', 64, { isPrimary: true }),
          userId,
          str('provider', 64),
          str('period_key', 40),
          { name: 'charges', type: 'text' },
          str('status', 16),
          bigint('created_at'),
          bigint('expires_at'),
        ],
        indices: [
          new TableIndex({ name: 'idx_usage_reservations_expiry', columnNames: ['status', 'expires_at'] }),
        ],
      }),
    );
  }

  async down(q: QueryRunner): Promise<void> {
    for (const t of [
      'usage_reservations',
      'usage_alerts',
      'api_requests',
      'usage_events',
      'usage_counters',
    ]) {
      await q.dropTable(t, true);
    }
  }
}
