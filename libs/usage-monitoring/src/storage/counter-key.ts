/**
 * Counter keys, for both stores: a user's counter by period, scope and metric (the per-user store's ledgers,
 * its journal's deltas, the shared store's leases).
 */

/**
 * A counter's key within one user's counters. Looked up several times per request: each key is built once
 * and then found by its parts (building it anew is a new string each time, flattened again by every lookup).
 */
export function counterKey(periodKey: string, scope: string, metric: string): string {
  let byScope = counterKeys.get(periodKey);
  if (!byScope) {
    // Periods come and go (a daily limit has a new key every day): start afresh now and then.
    if (counterKeys.size >= 256) counterKeys.clear();
    counterKeys.set(periodKey, (byScope = new Map()));
  }
  let byMetric = byScope.get(scope);
  if (!byMetric) byScope.set(scope, (byMetric = new Map()));
  let key = byMetric.get(metric);
  if (key === undefined) byMetric.set(metric, (key = `${periodKey}\u0001${scope}\u0001${metric}`));
  return key;
}
const counterKeys = new Map<string, Map<string, Map<string, string>>>();
