/** What a limit counts: requests, tokens (input + output), or cost in US dollars. */
export type LimitMetric = 'calls' | 'tokens' | 'cost';
/** The calendar period a limit counts over, in UTC (monthly periods may follow a billing anchor day). */
export type PeriodUnit = 'month' | 'day' | 'hour' | 'minute';

/**
 * One limit of a plan. An absent limit is unlimited; `max: 0` allows nothing.
 *
 * @example { metric: 'calls', scope: 'ai_text', period: 'month', max: 50 }
 * @example { metric: 'cost', scope: '*', period: 'month', max: 2 } // $2.00
 */
export interface Limit {
  /** What the limit counts. */
  metric: LimitMetric;
  /** A provider name, a provider group name (see `providerGroups`) or `'*'` for every provider. */
  scope: string;
  /** @default 'month' */
  period?: PeriodUnit;
  /** Calls, tokens, or US dollars for `cost` (at most 6 decimals). `0` allows nothing. */
  max: number;
  /**
   * `'shadow'`: never refuses; a request it would have refused is admitted, counted
   * (`usage_monitoring.decisions{decision="shadow_refused"}`), flagged on its ledger row (`shadow_refused`)
   * and logged, and its thresholds alert (`shadow: true`), so a new limit can be tried before it is
   * enforced. A plan may hold a shadow limit beside an enforced one of the same scope, metric and period.
   * @default 'enforce'
   */
  mode?: 'enforce' | 'shadow';
}

/**
 * A plan of the catalog (`plans` option); which plan a user is on comes from the `plan(userId)` option.
 *
 * @example { name: 'free', limits: [{ metric: 'calls', scope: 'ai_text', period: 'month', max: 50 }] }
 */
export interface Plan {
  /** The name `plan(userId)` answers with. */
  name: string;
  /** Every limit that applies to a user on this plan; an empty list is unlimited. */
  limits: Limit[];
}

/** What the `plan(userId)` option may answer: a plan name, or a name with the user's billing anchor. */
export type PlanAssignment =
  | string
  | {
      plan: string;
      /** Day of month (1–31) the user's monthly periods start on; 31 clamps to the month's last day. */
      billingAnchorDay?: number;
    };
