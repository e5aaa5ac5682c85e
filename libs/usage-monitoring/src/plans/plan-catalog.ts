import { closest, oneOf, shown } from '../options-validation';
import { usdToMicros } from '../pricing/money';
import type { Limit, LimitMetric, PeriodUnit, Plan } from './plan.interface';

/** A validated limit: `max` in calls, tokens or micro-dollars. */
export interface CompiledLimit {
  limitId: string;
  scope: string;
  metric: LimitMetric;
  period: PeriodUnit;
  max: number;
  /** Where the options declared it, e.g. `plans[0].limits[2]`. */
  where: string;
  /** `mode: 'shadow'`: never refuses (see `Limit.mode`). Its `limitId` ends in `:shadow`. */
  shadow: boolean;
  /** In `limitsFor` lists: a shadow limit of the same counter, checked beside this one. */
  shadowMax?: number;
  shadowLimitId?: string;
}

/** The `max` of a charge only a shadow limit counts: it never refuses. */
export const UNLIMITED = Number.MAX_SAFE_INTEGER;

export const METRICS: readonly LimitMetric[] = ['calls', 'tokens', 'cost'];
export const PERIODS: readonly PeriodUnit[] = ['month', 'day', 'hour', 'minute'];

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
          throw new Error(
            `${where}.limits[${j}] repeats ${l.shadow ? 'the shadow ' : ''}${l.metric} per ${l.period} for scope "${l.scope}"`,
          );
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
      hit = chargedLimits(this.limitsOf(plan).filter((l) => this.applies(l.scope, provider)));
      this.byProvider.set(key, hit);
    }
    return hit;
  }

  /**
   * Refuses a limit whose scope names no known provider, no provider group and not `'*'`: such a limit
   * would limit nothing (a typo such as `'opnai'` would leave `openai` unlimited).
   */
  checkScopes(knownProviders: ReadonlySet<string>): void {
    const names = [...knownProviders, ...Object.keys(this.groups)];
    for (const limits of this.plans.values()) {
      for (const l of limits) {
        if (l.scope === '*' || names.includes(l.scope)) continue;
        const hint = closest(l.scope, names);
        throw new Error(
          `${l.where}.scope "${l.scope}" names no provider, provider group or '*'` +
            `${hint ? ` (did you mean "${hint}"?)` : ''}. Known providers: ${[...knownProviders].sort().join(', ')}; ` +
            `groups: ${Object.keys(this.groups).join(', ') || 'none'}. A provider of your own is known once a route ` +
            `names it in @Metered({ provider }) or providerPatterns has it.`,
        );
      }
    }
  }

  /** Whether a limit's scope covers a provider. */
  applies(scope: string, provider: string): boolean {
    return scope === '*' || scope === provider || (this.groups[scope]?.includes(provider) ?? false);
  }
}

function compileLimit(l: Limit, where: string): CompiledLimit {
  if (!l || typeof l !== 'object')
    throw new Error(`${where} must be an object { metric, scope, period, max }`);
  const metric = oneOf(l.metric, METRICS, `${where}.metric`);
  const shadow = oneOf(l.mode ?? 'enforce', ['enforce', 'shadow'] as const, `${where}.mode`) === 'shadow';
  const period = oneOf(l.period ?? 'month', PERIODS, `${where}.period`);
  if (typeof l.scope !== 'string' || l.scope === '') {
    throw new Error(`${where}.scope must be a provider, a provider group or '*'`);
  }
  let max: number;
  if (metric === 'cost') {
    max = usdToMicros(l.max, `${where}.max`);
  } else {
    if (!Number.isSafeInteger(l.max) || l.max < 0) {
      throw new Error(
        `${where}.max must be a non-negative integer (got ${shown(l.max)}); omit the limit for unlimited`,
      );
    }
    max = l.max;
  }
  const limitId = `${l.scope}:${metric}:${period}${shadow ? ':shadow' : ''}`;
  return { limitId, scope: l.scope, metric, period, max, where, shadow };
}

/**
 * The limits a request is charged against, one per counter: a shadow limit is folded into the enforced
 * limit of the same counter (`shadowMax`), or stands alone as a charge that never refuses (`UNLIMITED`).
 */
function chargedLimits(limits: readonly CompiledLimit[]): CompiledLimit[] {
  const out = limits.filter((l) => !l.shadow).map((l) => ({ ...l }));
  for (const s of limits) {
    if (!s.shadow) continue;
    const shadowed = { shadowMax: s.max, shadowLimitId: s.limitId };
    const enforced = out.find((l) => l.scope === s.scope && l.metric === s.metric && l.period === s.period);
    if (enforced) Object.assign(enforced, shadowed);
    else out.push({ ...s, max: UNLIMITED, ...shadowed });
  }
  out.sort((a, b) => METRICS.indexOf(a.metric) - METRICS.indexOf(b.metric));
  return out;
}
