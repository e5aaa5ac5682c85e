import { Logger } from '@nestjs/common';
import { ThrottledLogger, escapeForLog } from '../enforcement/throttled-logger';
import type { PlanCatalog } from './plan-catalog';
import type { PlanAssignment } from './plan.interface';

export interface ResolvedPlan {
  name: string;
  /** Day of month monthly periods start on (1–31). */
  anchorDay: number;
}

/**
 * Turns what the host's `plan(userId)` answered into a catalog plan. An unknown plan name falls back to
 * the default plan, with a warning at most once a minute per name.
 */
export class PlanResolver {
  private readonly log = new ThrottledLogger(new Logger('UsageMonitoring'));
  private readonly resolvedCache = new Map<string, ResolvedPlan>();

  constructor(
    private readonly catalog: PlanCatalog,
    private readonly defaultPlan: string,
  ) {}

  resolve(assignment: PlanAssignment | undefined | null): ResolvedPlan {
    if (assignment === undefined || assignment === null) return this.named(this.defaultPlan, 1);
    if (typeof assignment === 'string') return this.named(assignment, 1);
    const day = assignment.billingAnchorDay;
    const anchorDay =
      Number.isInteger(day) && (day as number) >= 1 && (day as number) <= 31 ? (day as number) : 1;
    return this.named(assignment.plan, anchorDay);
  }

  private named(name: string, anchorDay: number): ResolvedPlan {
    const key = `${name}\u0001${anchorDay}`;
    const hit = this.resolvedCache.get(key);
    if (hit) return hit;
    if (!this.catalog.has(name)) {
      this.log.warn(
        `unknown:${name}`,
        `plan "${escapeForLog(String(name), 64)}" is not in the catalog; using "${this.defaultPlan}"`,
      );
      return { name: this.defaultPlan, anchorDay };
    }
    const resolved = { name, anchorDay };
    if (this.resolvedCache.size < 10_000) this.resolvedCache.set(key, resolved);
    return resolved;
  }
}
