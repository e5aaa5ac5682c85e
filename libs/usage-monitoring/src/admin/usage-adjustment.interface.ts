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

/** What `UsageAdminService.list` selects. */
export interface ListInput {
  /** Users at or above this share of any limit (0.8: 80 %), settled usage of the current period. */
  over: number;
  /** At most this many users, highest share first. @default 100 (at most 10,000) */
  limit?: number;
}

/** One limit of a user's plan and where its current period stands. Cost figures are US dollars. */
export interface LimitShare {
  /** The limit's scope. */
  scope: string;
  /** The limit's metric. */
  metric: LimitMetric;
  /** The limit's period. */
  period: PeriodUnit;
  /** `shadow` for a shadow limit (it refuses nothing). */
  mode: 'enforce' | 'shadow';
  /** The current period's key. */
  period_key: string;
  /** Settled usage of the period, less what resets forgave. */
  used: number;
  /** The limit as adjusted: the plan's (or an override's) plus grants. */
  max: number;
  /** `used / max` (1 for a limit of 0 with usage), rounded to 4 decimals. */
  share: number;
}

/** A user at or above the asked share of a limit (`UsageAdminService.list`). */
export interface UserOverShare {
  user_id: string;
  /** The highest share among `limits`. */
  share: number;
  /** The limits at or above the share, highest first. */
  limits: LimitShare[];
}

/** What `UsageAdminService.top` ranks by. */
export interface TopInput {
  /** @default 'cost' */
  by?: 'cost' | 'tokens' | 'calls';
  /** How many users. @default 10 (at most 1,000) */
  limit?: number;
}

/** A user's spending in their current billing month (`UsageAdminService.top`). */
export interface TopSpender {
  user_id: string;
  /** Metered calls (ledger rows). */
  calls: number;
  /** Input plus output tokens. */
  tokens: number;
  /** US dollars. */
  cost: number;
  /** The billing month, e.g. `month:2026-12-01`. */
  period_key: string;
}
