import { Inject, Injectable, Optional } from '@nestjs/common';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';

/** Set by the module when the dashboard is mounted: only then are decisions kept per minute. */
export const DECISION_WINDOW_ON = Symbol('DECISION_WINDOW_ON');

const MINUTES = 60;

/** Admission decisions of one minute, by `decision`, `provider` and `code`. */
export interface DecisionCount {
  decision: string;
  provider: string;
  code: string;
  count: number;
}

/**
 * The last hour's admission decisions, per minute, for the operator's dashboard: sixty buckets in a ring,
 * each a map from decision, provider and code to a count. One map increment per decision, and nothing at
 * all unless the dashboard is mounted.
 */
@Injectable()
export class DecisionWindow {
  private readonly minutes = new Float64Array(MINUTES).fill(-1);
  private readonly buckets = Array.from({ length: MINUTES }, () => new Map<string, number>());
  private readonly clock: () => number;
  readonly on: boolean;

  constructor(
    @Inject(NORMALIZED_OPTIONS) options: NormalizedUsageOptions,
    @Optional() @Inject(DECISION_WINDOW_ON) on?: boolean,
  ) {
    this.clock = options.clock;
    this.on = on === true;
  }

  record(decision: string, provider: string, code: string): void {
    const minute = Math.floor(this.clock() / 60_000);
    const i = minute % MINUTES;
    const bucket = this.buckets[i];
    if (this.minutes[i] !== minute) {
      this.minutes[i] = minute;
      bucket.clear();
    }
    const key = `${decision}\u0001${provider}\u0001${code}`;
    bucket.set(key, (bucket.get(key) ?? 0) + 1);
  }

  /** The last 60 minutes (oldest first, the current one last), each with its counts. */
  lastHour(): { minute: number; counts: DecisionCount[] }[] {
    const now = Math.floor(this.clock() / 60_000);
    const out: { minute: number; counts: DecisionCount[] }[] = [];
    for (let m = now - MINUTES + 1; m <= now; m++) {
      const i = ((m % MINUTES) + MINUTES) % MINUTES;
      const counts: DecisionCount[] = [];
      if (this.minutes[i] === m) {
        for (const [key, count] of this.buckets[i]) {
          const [decision, provider, code] = key.split('\u0001');
          counts.push({ decision, provider, code, count });
        }
      }
      out.push({ minute: m, counts });
    }
    return out;
  }
}
