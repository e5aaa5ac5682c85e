import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Adds `counter_deltas` (JSON) to the ledger and, on SQLite, a trigger that applies it: inserting a
 * ledger row also writes its `api_requests` row and adds its `counter_deltas` to the counters, in the
 * same statement. The per-user SQLite store writes a batch of settlements as one multi-row INSERT whose
 * last row carries the batch's summed deltas (the other rows NULL): one statement, atomic, one trip to
 * SQLite's thread, three counter upserts per batch instead of per row. A retried batch's rows conflict
 * on their request ids and are skipped whole, deltas included, so nothing counts twice.
 */
/** Either SQLite driver (`sqlite3` or `better-sqlite3`): the same file format, the same trigger. */
const onSqlite = (q: QueryRunner) => ['sqlite', 'better-sqlite3'].includes(q.connection.options.type);

export class UsageCounterDeltas1764288000000 implements MigrationInterface {
  name = 'UsageCounterDeltas1764288000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query('ALTER TABLE usage_events ADD COLUMN counter_deltas text');
    if (!onSqlite(q)) return;
    await q.query(`
      CREATE TRIGGER usage_events_apply AFTER INSERT ON usage_events
      BEGIN
        INSERT INTO api_requests (request_id, user_id, provider, path, method, status_code, duration_ms, occurred_at)
        VALUES (NEW.request_id, NEW.user_id, NEW.provider, NEW.endpoint, NEW.method, NEW.status_code,
                NEW.response_time_ms, NEW.occurred_at)
        ON CONFLICT (request_id) DO NOTHING;
        INSERT INTO usage_counters (user_id, period_key, scope, metric, used, reserved, period_end, updated_at)
        SELECT NEW.user_id, json_extract(j.value, '$.p'), json_extract(j.value, '$.s'), json_extract(j.value, '$.m'),
               json_extract(j.value, '$.a'), 0, json_extract(j.value, '$.e'), NEW.occurred_at
        FROM json_each(NEW.counter_deltas) AS j
        WHERE json_extract(j.value, '$.a') > 0
        ON CONFLICT (user_id, period_key, scope, metric)
        DO UPDATE SET used = used + excluded.used, updated_at = excluded.updated_at;
      END`);
  }

  async down(q: QueryRunner): Promise<void> {
    if (onSqlite(q)) await q.query('DROP TRIGGER IF EXISTS usage_events_apply');
    await q.query('ALTER TABLE usage_events DROP COLUMN counter_deltas');
  }
}
