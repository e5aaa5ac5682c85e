import type { LimitMetric, PeriodUnit } from '../plans/plan.interface';

/** Which limit of the user's plan a change is about. */
export interface LimitSelector {
  /** The limit's scope: a provider, a provider group or `'*'`, as in the plan. */
  scope: string;
  /** What the limit counts. */
  metric: LimitMetric;
  /** @default 'month' */
  period?: PeriodUnit;
}

/** Who made a change and why: both are kept in the history, which is never deleted. */
export interface AdjustmentNote {
  /** Who made the change (the admin's id; the admin controller takes it from the authenticated principal). */
  actor: string;
  /** Why (free text, at most 1,000 characters). */
  reason: string;
}

/** Extra quota for the current period of one limit (calls, tokens, or US dollars for `cost`). */
export interface GrantInput extends LimitSelector, AdjustmentNote {
  /** How much to add: a positive integer, or dollars with at most 6 decimals for `cost`. */
  amount: number;
}

/** A reset of the current period: every limit of the user's plan, or those the given fields select. */
export interface ResetInput extends Partial<LimitSelector>, AdjustmentNote {}

/** A new `max` for one of the user's limits, for good or until a time (a temporary increase or cut). */
export interface SetLimitInput extends LimitSelector, AdjustmentNote {
  /** The new limit (calls, tokens, or US dollars for `cost`). */
  max: number;
  /** When the override ends (a `Date` or ISO 8601 text, in the future); omitted: until cleared. */
  until?: Date | string;
}

/** Back to the plan's limit. */
export interface ClearLimitInput extends LimitSelector, AdjustmentNote {}

/** One change of the history (`UsageAdminService.history`). Cost figures are US dollars. */
export interface UsageAdjustment {
  /** The change's id (time-ordered). */
  id: string;
  /** The user the change is about. */
  user_id: string;
  /** `grant`, `reset`, `override` (a limit set) or `override_cleared` (back to the plan's). */
  kind: 'grant' | 'reset' | 'override' | 'override_cleared';
  /** The limit's scope. */
  scope: string;
  /** The limit's metric. */
  metric: LimitMetric;
  /** The limit's period. */
  period: PeriodUnit;
  /** The period a grant or reset applied to; null for overrides. */
  period_key: string | null;
  /** A grant's amount, or the usage a reset forgave; null for overrides. */
  amount: number | null;
  /** An override's limit; null otherwise. */
  max: number | null;
  /** ISO 8601 time an override ends; null for good (or not an override). */
  until: string | null;
  /** Who made it. */
  actor: string;
  /** Why. */
  reason: string;
  /** ISO 8601 time of the change. */
  at: string;
}

/** A limit override in force. Cost figures are US dollars. */
export interface LimitOverride {
  /** The limit's scope. */
  scope: string;
  /** The limit's metric. */
  metric: LimitMetric;
  /** The limit's period. */
  period: PeriodUnit;
  /** The plan's limit it replaces (null when the user's plan no longer has this limit). */
  plan_max: number | null;
  /** The user's limit while the override is in force. */
  max: number;
  /** ISO 8601 time it ends; null for good. */
  until: string | null;
}
