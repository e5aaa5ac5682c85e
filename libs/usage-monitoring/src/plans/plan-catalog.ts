import { usdToMicros } from '../pricing/money';
import type { Limit, LimitMetric, PeriodUnit, Plan } from './plan.interface';

/** A validated limit: `max` in calls, tokens or micro-dollars. */
export interface CompiledLimit {
  limitId: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  max: number;
}

const METRICS: readonly LimitMetric[] = ['calls', 'tokens', 'cost'];
const PERIODS: readonly PeriodUnit[] = ['month', 'day', 'hour', 'minute'];

/**
 * The plan catalog, validated once. Answers which limits apply to a provider under a plan (its own
 * scope, the groups it belongs to, and `'*'`), checked in the original's order: calls, tokens, cost.
 */
export class PlanCatalog {
  private readonly plans = new Map<string, CompiledLimit[]>();
  private readonly byProvider = new Map<string, readonly CompiledLimit[]>();

  constructor(
    plans: readonly Plan[],
    private readonly groups: Readonly<Record<string, readonly string[]>>,
  ) {
    if (!Array.isArray(plans) || plans.length === 0) {
      throw new Error('plans must be a non-empty array of { name, limits }');
    }
    plans.forEach((plan, i) => {
      const where = `plans[${i}]`;
      if (!plan || typeof plan.name !== 'string' || plan.name === '') {
        throw new Error(`${where}.name must be a non-empty string`);
      }
      if (this.plans.has(plan.name)) throw new Error(`${where}.name "${plan.name}" is used twice`);
      if (!Array.isArray(plan.limits)) throw new Error(`${where}.limits must be an array`);
      const compiled = (plan.limits as Limit[]).map((l: Limit, j: number) =>
        compileLimit(l, `${where}.limits[${j}]`),
      );
      const seen = new Set<string>();
      for (const [j, l] of compiled.entries()) {
        if (seen.has(l.limitId)) {
          throw new Error(`${where}.limits[${j}] repeats ${l.metric} per ${l.period} for scope "${l.scope}"`);
        }
        seen.add(l.limitId);
      }
      compiled.sort(
        (a: CompiledLimit, b: CompiledLimit) => METRICS.indexOf(a.metric) - METRICS.indexOf(b.metric),
      );
      this.plans.set(plan.name, compiled);
    });
  }

  has(plan: string): boolean {
    return this.plans.has(plan);
  }

  get names(): string[] {
    return [...this.plans.keys()];
  }

  /** Every limit of a plan. */
  limitsOf(plan: string): readonly CompiledLimit[] {
    return this.plans.get(plan) ?? [];
  }

  /** The limits a request to `provider` is charged against under `plan` (cached). */
  limitsFor(plan: string, provider: string): readonly CompiledLimit[] {
    const key = `${plan}\u0001${provider}`;
    let hit = this.byProvider.get(key);
    if (!hit) {
      hit = this.limitsOf(plan).filter((l) => this.applies(l.scope, provider));
      this.byProvider.set(key, hit);
    }
    return hit;
  }

  /** Whether a limit's scope covers a provider. */
  applies(scope: string, provider: string): boolean {
    return scope === '*' || scope === provider || (this.groups[scope]?.includes(provider) ?? false);
  }
}

function compileLimit(l: Limit, where: string): CompiledLimit {
  if (!l || typeof l !== 'object')
    throw new Error(`${where} must be an object { metric, scope, period, max }`);
  if (!METRICS.includes(l.metric)) {
    throw new Error(`${where}.metric must be one of ${METRICS.join(', ')} (got ${JSON.stringify(l.metric)})`);
  }
  const period = l.period ?? 'month';
  if (!PERIODS.includes(period)) {
    throw new Error(`${where}.period must be one of ${PERIODS.join(', ')} (got ${JSON.stringify(l.period)})`);
  }
  if (typeof l.scope !== 'string' || l.scope === '') {
    throw new Error(`${where}.scope must be a provider, a provider group or '*'`);
  }
  let max: number;
  if (l.metric === 'cost') {
    max = usdToMicros(l.max, `${where}.max`);
  } else {
    if (!Number.isSafeInteger(l.max) || l.max < 0) {
      throw new Error(
        `${where}.max must be a non-negative integer (got ${JSON.stringify(l.max)}); omit the limit for unlimited`,
      );
    }
    max = l.max;
  }
  return { limitId: `${l.scope}:${l.metric}:${period}`, scope: l.scope, metric: l.metric, period, max };
}
