import { UsageSchema1764201600000 } from './1764201600000-usage-schema';

/** The usage schema's migrations, oldest first. */
export const USAGE_MIGRATIONS = [UsageSchema1764201600000];

/** Name of the table TypeORM records applied usage migrations in. */
export const USAGE_MIGRATIONS_TABLE = 'usage_migrations';
