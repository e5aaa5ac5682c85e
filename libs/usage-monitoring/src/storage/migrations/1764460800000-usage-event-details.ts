import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Ledger detail for audits: the cached, cache-write and reasoning tokens inside the input and output
 * totals (each priced at its own rate), and the price version that priced the row
 * (`genai-prices@<version>:<model>`, `options:<hash>:<name>` or `builtin:<name>`), so that a cost can be
 * recomputed from the row alone. Rows written before this migration keep 0 and NULL.
 */
export class UsageEventDetails1764460800000 implements MigrationInterface {
  name = 'UsageEventDetails1764460800000';

  async up(q: QueryRunner): Promise<void> {
    for (const column of ['cached_input_tokens', 'cache_write_tokens', 'reasoning_tokens']) {
      await q.query(`ALTER TABLE usage_events ADD COLUMN ${column} bigint NOT NULL DEFAULT 0`);
    }
    await q.query('ALTER TABLE usage_events ADD COLUMN price_version varchar(160)');
  }

  async down(q: QueryRunner): Promise<void> {
    for (const column of ['price_version', 'reasoning_tokens', 'cache_write_tokens', 'cached_input_tokens']) {
      await q.query(`ALTER TABLE usage_events DROP COLUMN ${column}`);
    }
  }
}
