import { Injectable } from '@nestjs/common';
import type { StoredOverride } from '../storage/usage-store.interface';

interface Override {
  max: number;
  until: number | null;
}

/**
 * Users' limit overrides in force, in memory: read on every admission of a user who has one (one map
 * lookup for everyone else), kept up to date by `UsageAdminService` and, on the shared store, by the other
 * instances' notifications.
 */
@Injectable()
export class LimitOverrides {
  private readonly byUser = new Map<string, Map<string, Override>>();

  /** The user's overrides by limit id (`scope:metric:period`), if any. */
  of(userId: string): ReadonlyMap<string, Override> | undefined {
    return this.byUser.size === 0 ? undefined : this.byUser.get(userId);
  }

  /** The limit's max for this user at `now` (store units): the override's while in force, else `planMax`. */
  static maxOf(
    overrides: ReadonlyMap<string, Override>,
    limitId: string,
    planMax: number,
    now: number,
  ): number {
    const o = overrides.get(limitId);
    return o && (o.until === null || o.until > now) ? o.max : planMax;
  }

  /** Replaces one user's overrides (`rows` are theirs), or everyone's when `userId` is undefined. */
  replace(rows: StoredOverride[], userId?: string): void {
    if (userId === undefined) this.byUser.clear();
    else this.byUser.delete(userId);
    for (const r of rows) {
      if (userId !== undefined && r.userId !== userId) continue;
      let m = this.byUser.get(r.userId);
      if (!m) this.byUser.set(r.userId, (m = new Map()));
      m.set(`${r.scope}:${r.metric}:${r.period}`, { max: r.max, until: r.until });
    }
  }
}
