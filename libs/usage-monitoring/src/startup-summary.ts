import type { DataSource, DataSourceOptions } from 'typeorm';
import type { NormalizedUsageOptions } from './usage-monitoring.normalized-options';
import { EMERGENCY_FAIL_OPEN_ENV } from './usage-monitoring.constants';

/**
 * The one line start-up logs: which store and where (never a password), how many plans, how providers are
 * detected, and whether enforcement fails open.
 */
export function startupSummary(o: NormalizedUsageOptions): string {
  const s = o.storage;
  const store =
    s.type === 'shared'
      ? `shared PostgreSQL store at ${databaseOf(s.dataSource)}${s.leases ? ' (leases on)' : ''}`
      : `per-user SQLite store in ${JSON.stringify(s.dataDir)} (${s.driver}, at most ${s.maxOpenDataSources} open files)`;
  const plans = o.catalog.names;
  const detection = o.detector
    ? `providers detected by ${o.detector.mode === 'path' ? 'path' : 'path and User-Agent'}`
    : 'only @Metered routes metered';
  return (
    `${store}; ${plans.length} plan${plans.length === 1 ? '' : 's'} (default "${o.defaultPlan}"); ${detection}; ` +
    `enforcement ${o.emergencyFailOpen ? `FAILS OPEN (${EMERGENCY_FAIL_OPEN_ENV})` : 'fails closed'}`
  );
}

/** `host:port/database` of a PostgreSQL DataSource or its options, without user or password. */
function databaseOf(source: DataSource | DataSourceOptions): string {
  const options = ('options' in source && 'isInitialized' in source ? source.options : source) as {
    url?: string;
    host?: string;
    port?: number;
    database?: string;
  };
  if (options.url) {
    try {
      const url = new URL(options.url);
      return `${url.hostname}:${url.port || 5432}${url.pathname}`;
    } catch {
      return 'the configured url';
    }
  }
  return `${options.host ?? 'localhost'}:${options.port ?? 5432}/${options.database ?? ''}`;
}
