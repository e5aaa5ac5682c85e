import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The shared store's alert webhook outbox (`alerts.webhook`): one row per alert and webhook, written in the
 * transaction of the settlement batch that crossed the threshold, deleted once delivered. `claimed_until`
 * keeps two instances from delivering the same row at once. (The per-user store keeps its outbox in the
 * journal's database: nothing to do for a user's file.)
 */
export class UsageAlertOutbox1764892800000 implements MigrationInterface {
  name = 'UsageAlertOutbox1764892800000';

  async up(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query(`CREATE TABLE usage_alert_outbox (
      id bigserial PRIMARY KEY,
      target text NOT NULL,
      user_id text NOT NULL,
      period_key text NOT NULL,
      limit_id text NOT NULL,
      threshold int NOT NULL,
      alert jsonb NOT NULL,
      attempts int NOT NULL DEFAULT 0,
      next_at int8 NOT NULL DEFAULT 0,
      claimed_until int8 NOT NULL DEFAULT 0,
      parked boolean NOT NULL DEFAULT false,
      last_error text,
      UNIQUE (target, user_id, period_key, limit_id, threshold)
    )`);
    await q.query(
      'CREATE INDEX usage_alert_outbox_head ON usage_alert_outbox (target, user_id, id) WHERE NOT parked',
    );
  }

  async down(q: QueryRunner): Promise<void> {
    if (q.connection.options.type !== 'postgres') return;
    await q.query('DROP TABLE usage_alert_outbox');
  }
}
