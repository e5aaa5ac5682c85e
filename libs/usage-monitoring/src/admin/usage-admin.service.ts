import { BadRequestException, Inject, Injectable } from '@nestjs/common';
import { AlertWebhooks } from '../alerts/alert-webhooks';
import { periodWindow } from '../plans/billing-period';
import { METRICS, PERIODS, UNLIMITED, type CompiledLimit } from '../plans/plan-catalog';
import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';
import { microsToUsd, usdToMicros } from '../pricing/money';
import { MAX_USER_ID_LENGTH } from '../storage/sqlite/user-file-name';
import type { SpendingCounter, StoredAdjustment, UsageStore } from '../storage/usage-store.interface';
import { NORMALIZED_OPTIONS, USAGE_STORE } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import { LimitOverrides } from './limit-overrides';
import type {
  AdjustmentNote,
  ClearLimitInput,
  GrantInput,
  LimitOverride,
  LimitSelector,
  LimitShare,
  ListInput,
  ResetInput,
  SetLimitInput,
  TopInput,
  TopSpender,
  UsageAdjustment,
  UserOverShare,
} from './usage-adjustment.interface';

const MAX_ACTOR = 256;
const MAX_REASON = 1_000;

/** A change the admin API refuses: a 400 whose message names the field and what it must be. */
export class InvalidAdjustmentException extends BadRequestException {
  constructor(message: string) {
    super({ error: 'Invalid adjustment', message });
  }
}

/**
 * Changes what one user may spend without redeploying the plans: grants of extra quota for the current
 * period, resets of the current period, and limit overrides (for good or until a time). Each change takes
 * effect for the user's next admission, atomically with requests in flight (the store applies grants and
 * resets under the same lock or in the same synchronous step as admissions), and is appended to the user's
 * history with who made it and why. History is never deleted.
 *
 * On the shared store a grant or reset is in the counter row every instance decides against; an override
 * reaches the other instances by a PostgreSQL notification (milliseconds; after a lost connection, when
 * it is back).
 */
@Injectable()
export class UsageAdminService {
  /** @internal Nest injects these. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    @Inject(USAGE_STORE) private readonly store: UsageStore,
    private readonly overridesInForce: LimitOverrides,
    private readonly webhooks: AlertWebhooks,
  ) {}

  /**
   * Sends the alerts that were parked after `alerts.webhook.retry.maxAttempts` again, from their first
   * attempt (of one user, or all), in order per user as ever. Resolves with how many; 0 without webhooks.
   */
  async resendParkedAlerts(userId?: string): Promise<number> {
    if (userId !== undefined) checkUser(userId);
    return this.webhooks.resendParked(userId);
  }

  /** Adds `amount` to one limit for the user's current period of it. */
  async grant(userId: string, input: GrantInput): Promise<UsageAdjustment> {
    checkUser(userId);
    const note = checkNote(input);
    const { limit, anchorDay } = await this.limitOf(userId, input);
    const amount = toUnits(limit.metric, input?.amount, 'amount', true);
    return publicOf(await this.adjustCounter('grant', userId, limit, anchorDay, amount, note));
  }

  /**
   * Starts the current period over for every limit of the user's plan, or those `input` selects: the
   * usage settled so far stops counting (requests in flight count after the reset); grants stay.
   */
  async reset(userId: string, input: ResetInput): Promise<UsageAdjustment[]> {
    checkUser(userId);
    const note = checkNote(input);
    const { limits, anchorDay } = await this.planOf(userId);
    if (input.metric !== undefined) oneOf(input.metric, METRICS, 'metric');
    if (input.period !== undefined) oneOf(input.period, PERIODS, 'period');
    // One reset per counter: a shadow limit beside an enforced one of the same counter shares it.
    const chosen = limits.filter(
      (l) =>
        !(l.shadow && limits.some((e) => !e.shadow && sameCounter(e, l))) &&
        (input.scope === undefined || l.scope === input.scope) &&
        (input.metric === undefined || l.metric === input.metric) &&
        (input.period === undefined || l.period === input.period),
    );
    if (chosen.length === 0)
      throw new InvalidAdjustmentException(
        `the user's plan has no limit matching ${selectionOf(input)}; its limits: ${listed(limits)}`,
      );
    const out: UsageAdjustment[] = [];
    // One at a time: each reset forgives what its counter holds when its turn comes.
    for (const l of chosen)
      out.push(publicOf(await this.adjustCounter('reset', userId, l, anchorDay, 0, note)));
    return out;
  }

  /** Sets one of the user's limits to `max`, for good or `until` a time; then it is the plan's again. */
  async setLimit(userId: string, input: SetLimitInput): Promise<UsageAdjustment> {
    checkUser(userId);
    const note = checkNote(input);
    const { limit } = await this.limitOf(userId, input);
    if (limit.shadow)
      throw new InvalidAdjustmentException(
        `${limit.metric} for ${limit.scope} per ${limit.period} is a shadow limit of the user's plan: it refuses nothing, so there is nothing to override (change the plan)`,
      );
    const max = toUnits(limit.metric, input?.max, 'max', false);
    const now = this.options.clock();
    let until: number | null = null;
    if (input.until !== undefined && input.until !== null) {
      until = input.until instanceof Date ? input.until.getTime() : Date.parse(String(input.until));
      if (!Number.isFinite(until))
        throw new InvalidAdjustmentException('until must be a Date or an ISO 8601 time');
      if (until <= now) throw new InvalidAdjustmentException('until must be in the future');
    }
    return this.override(userId, limit, { kind: 'override', max, until, ...note, now });
  }

  /** Puts one of the user's limits back to the plan's. */
  async clearLimit(userId: string, input: ClearLimitInput): Promise<UsageAdjustment> {
    checkUser(userId);
    const note = checkNote(input);
    const selector = checkSelector(input);
    const now = this.options.clock();
    return this.override(userId, selector, {
      kind: 'override_cleared',
      max: null,
      until: null,
      ...note,
      now,
    });
  }

  /** The user's overrides in force now, with the plan's limit each replaces. */
  async overrides(userId: string): Promise<LimitOverride[]> {
    checkUser(userId);
    const now = this.options.clock();
    const { limits } = await this.planOf(userId);
    const rows = await this.store.overrides(now, userId);
    return rows.map((r) => {
      const money = (n: number) => (r.metric === 'cost' ? microsToUsd(n) : n);
      const plan = limits.find((l) => l.scope === r.scope && l.metric === r.metric && l.period === r.period);
      return {
        scope: r.scope,
        metric: r.metric,
        period: r.period,
        plan_max: plan ? money(plan.max) : null,
        max: money(r.max),
        until: r.until === null ? null : new Date(r.until).toISOString(),
      };
    });
  }

  /** The user's changes, newest first (at most `limit`, default 100, at most 1,000). */
  async history(userId: string, options: { limit?: number } = {}): Promise<UsageAdjustment[]> {
    checkUser(userId);
    const limit = options.limit ?? 100;
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 1_000)
      throw new InvalidAdjustmentException('limit must be an integer from 1 to 1000');
    return (await this.store.adjustments(userId, limit)).map(publicOf);
  }

  /**
   * Who is close to a limit: users whose settled usage of the current period is at least `over` of any
   * limit of their plan (as adjusted: overrides and grants; resets forgive), highest share first. Read from
   * the store's summary (never every user's file); each user listed has their plan resolved once.
   */
  async list(input: ListInput): Promise<UserOverShare[]> {
    const over = input?.over;
    if (typeof over !== 'number' || !Number.isFinite(over) || over <= 0)
      throw new InvalidAdjustmentException('over must be a number above 0 (0.8 for 80 %)');
    const limit = checkCount(input.limit, 100, 10_000);
    const now = this.options.clock();
    const byUser = new Map<string, SpendingCounter[]>();
    for (const c of await this.store.currentCounters(now)) {
      const list = byUser.get(c.userId);
      if (list) list.push(c);
      else byUser.set(c.userId, [c]);
    }
    const out: { user: UserOverShare; ratio: number }[] = [];
    const users = [...byUser.keys()];
    // Plans resolved a bounded number at a time: `resolvePlan` is the host's and may query its database.
    for (let i = 0; i < users.length; i += 32) {
      const plans = await Promise.all(users.slice(i, i + 32).map((u) => this.planOf(u)));
      plans.forEach((plan, j) => {
        const userId = users[i + j];
        const shares = this.sharesOf(userId, plan, byUser.get(userId)!, over, now);
        if (shares.length)
          out.push({
            ratio: shares[0].ratio,
            user: { user_id: userId, share: shares[0].share.share, limits: shares.map((x) => x.share) },
          });
      });
    }
    out.sort((a, b) => b.ratio - a.ratio || compareIds(a.user.user_id, b.user.user_id));
    return out.slice(0, limit).map((x) => x.user);
  }

  /**
   * The users who spent the most in their current billing month, by `cost` (default), `tokens` or
   * `calls`, most first, ties by user id. Read from the store's summary (never every user's file). A
   * user's billing month starts on their plan's `anchorDay`.
   */
  async top(input: TopInput = {}): Promise<TopSpender[]> {
    const by = input.by ?? 'cost';
    if (!['cost', 'tokens', 'calls'].includes(by))
      throw new InvalidAdjustmentException('by must be one of cost, tokens, calls');
    const limit = checkCount(input.limit, 10, 1_000);
    const now = this.options.clock();
    // The current billing month of every anchor day: a user's rows carry their own anchor's key.
    const keys = new Set<string>();
    for (let day = 1; day <= 31; day++) keys.add(periodWindow('month', now, day).key);
    const rows = await this.store.topSpenders({ by, periodKeys: [...keys], limit });
    return rows.map((r) => ({
      user_id: r.userId,
      calls: r.calls,
      tokens: r.tokens,
      cost: microsToUsd(r.costMicros),
      period_key: r.periodKey,
    }));
  }

  /** The user's limits at or above `over`, highest share first. */
  private sharesOf(
    userId: string,
    plan: { limits: readonly CompiledLimit[]; anchorDay: number },
    counters: SpendingCounter[],
    over: number,
    now: number,
  ): { share: LimitShare; ratio: number }[] {
    const overridden = this.overridesInForce.of(userId);
    const out: { share: LimitShare; ratio: number }[] = [];
    for (const l of plan.limits) {
      const key = periodWindow(l.period, now, plan.anchorDay).key;
      const c = counters.find((x) => x.periodKey === key && x.scope === l.scope && x.metric === l.metric);
      if (!c || c.used <= 0) continue;
      const base = !l.shadow && overridden ? LimitOverrides.maxOf(overridden, l.limitId, l.max, now) : l.max;
      if (base >= UNLIMITED) continue;
      const max = base + c.granted;
      const ratio = max <= 0 ? 1 : c.used / max;
      if (ratio < over) continue;
      const money = (n: number) => (l.metric === 'cost' ? microsToUsd(n) : n);
      out.push({
        ratio,
        share: {
          scope: l.scope,
          metric: l.metric,
          period: l.period,
          mode: l.shadow ? 'shadow' : 'enforce',
          period_key: key,
          used: money(c.used),
          max: money(max),
          share: Math.round(ratio * 10_000) / 10_000,
        },
      });
    }
    return out.sort((a, b) => b.ratio - a.ratio);
  }

  private async override(
    userId: string,
    limit: { scope: string; metric: LimitMetric; period: PeriodUnit },
    change: {
      kind: 'override' | 'override_cleared';
      max: number | null;
      until: number | null;
      now: number;
    } & AdjustmentNote,
  ): Promise<UsageAdjustment> {
    const stored = await this.store.overrideLimit({
      userId,
      scope: limit.scope,
      metric: limit.metric,
      period: limit.period,
      ...change,
    });
    // In force here for the next admission; the other instances of a shared store are notified.
    this.overridesInForce.replace(await this.store.overrides(change.now, userId), userId);
    return publicOf(stored);
  }

  /** A grant or reset of the limit's counter in the user's current period of it. */
  private adjustCounter(
    kind: 'grant' | 'reset',
    userId: string,
    limit: CompiledLimit,
    anchorDay: number,
    amount: number,
    note: AdjustmentNote,
  ): Promise<StoredAdjustment> {
    const now = this.options.clock();
    const w = periodWindow(limit.period, now, anchorDay);
    return this.store.adjustCounter({
      kind,
      userId,
      scope: limit.scope,
      metric: limit.metric,
      period: limit.period,
      periodKey: w.key,
      periodEnd: w.end,
      amount,
      ...note,
      now,
    });
  }

  private async planOf(userId: string): Promise<{ limits: readonly CompiledLimit[]; anchorDay: number }> {
    const plan = this.options.plans.resolve(await this.options.resolvePlan(userId));
    return { limits: this.options.catalog.limitsOf(plan.name), anchorDay: plan.anchorDay };
  }

  private async limitOf(
    userId: string,
    input: LimitSelector,
  ): Promise<{ limit: CompiledLimit; anchorDay: number }> {
    const s = checkSelector(input);
    const { limits, anchorDay } = await this.planOf(userId);
    // The enforced limit when there is one (a shadow limit of the same counter shares its grants).
    const matching = limits.filter(
      (l) => l.scope === s.scope && l.metric === s.metric && l.period === s.period,
    );
    const limit = matching.find((l) => !l.shadow) ?? matching[0];
    if (!limit)
      throw new InvalidAdjustmentException(
        `the user's plan has no ${s.metric} limit for ${s.scope} per ${s.period}; its limits: ${listed(limits)}`,
      );
    return { limit, anchorDay };
  }
}

/** Whether two limits count the same counter (scope, metric and period). */
function sameCounter(a: Required<LimitSelector>, b: Required<LimitSelector>): boolean {
  return a.scope === b.scope && a.metric === b.metric && a.period === b.period;
}

/** Ties by user id, in code point order (as the stores order them). */
function compareIds(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function checkCount(value: unknown, fallback: number, most: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < 1 || (value as number) > most)
    throw new InvalidAdjustmentException(`limit must be an integer from 1 to ${most}`);
  return value as number;
}

function checkUser(userId: unknown): void {
  if (typeof userId !== 'string' || userId === '' || userId.length > MAX_USER_ID_LENGTH)
    throw new InvalidAdjustmentException(
      `the user id must be a non-empty string of at most ${MAX_USER_ID_LENGTH} characters`,
    );
}

function checkNote(input: Partial<AdjustmentNote> | undefined): AdjustmentNote {
  const actor = input?.actor;
  const reason = input?.reason;
  if (typeof actor !== 'string' || actor.trim() === '' || actor.length > MAX_ACTOR)
    throw new InvalidAdjustmentException(
      `actor must be a non-empty string of at most ${MAX_ACTOR} characters`,
    );
  if (typeof reason !== 'string' || reason.trim() === '' || reason.length > MAX_REASON)
    throw new InvalidAdjustmentException(
      `reason must be a non-empty string of at most ${MAX_REASON} characters (it is kept in the history)`,
    );
  return { actor, reason };
}

function checkSelector(input: Partial<LimitSelector> | undefined): Required<LimitSelector> {
  if (typeof input?.scope !== 'string' || input.scope === '')
    throw new InvalidAdjustmentException("scope must be the limit's scope: a provider, a group or '*'");
  return {
    scope: input.scope,
    metric: oneOf(input.metric, METRICS, 'metric'),
    period: oneOf(input.period ?? 'month', PERIODS, 'period'),
  };
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], field: string): T {
  if (!allowed.includes(value as T))
    throw new InvalidAdjustmentException(`${field} must be one of ${allowed.join(', ')}`);
  return value as T;
}

/** A figure of the admin API in store units: calls and tokens as integers, dollars to micro-dollars. */
function toUnits(metric: LimitMetric, value: unknown, field: string, positive: boolean): number {
  const what = positive ? 'a positive' : 'a non-negative';
  if (metric === 'cost') {
    let micros: number;
    try {
      micros = usdToMicros(value as number, field);
    } catch (e) {
      throw new InvalidAdjustmentException(
        `${field} must be ${what} number of US dollars: ${(e as Error).message}`,
      );
    }
    if (positive && micros === 0) throw new InvalidAdjustmentException(`${field} must be more than 0`);
    return micros;
  }
  if (!Number.isSafeInteger(value) || (value as number) < (positive ? 1 : 0))
    throw new InvalidAdjustmentException(`${field} must be ${what} integer of ${metric}`);
  return value as number;
}

function selectionOf(s: Partial<LimitSelector>): string {
  const parts = [s.metric, s.scope && `for ${s.scope}`, s.period && `per ${s.period}`].filter(Boolean);
  return parts.length ? parts.join(' ') : 'the selection';
}

function listed(limits: readonly CompiledLimit[]): string {
  return limits.length === 0
    ? 'none (unlimited)'
    : limits.map((l) => `${l.metric} for ${l.scope} per ${l.period}`).join('; ');
}

/** A stored change as the admin API shows it (dollars for cost, ISO times). */
function publicOf(a: StoredAdjustment): UsageAdjustment {
  const money = (n: number | null) => (n === null ? null : a.metric === 'cost' ? microsToUsd(n) : n);
  return {
    id: a.id,
    user_id: a.userId,
    kind: a.kind,
    scope: a.scope,
    metric: a.metric,
    period: a.period,
    period_key: a.periodKey,
    amount: money(a.amount),
    max: money(a.max),
    until: a.until === null ? null : new Date(a.until).toISOString(),
    actor: a.actor,
    reason: a.reason,
    at: new Date(a.createdAt).toISOString(),
  };
}
