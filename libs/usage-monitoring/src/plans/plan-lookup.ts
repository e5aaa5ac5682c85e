import { LRUCache } from 'lru-cache';
import type { PlanAssignment } from './plan.interface';

type PlanFn = (userId: string) => PlanAssignment | undefined | Promise<PlanAssignment | undefined>;

/** The host's `plan(userId)` failed or did not answer within `planTimeoutMs`. Never shown to a client. */
export class PlanLookupError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PlanLookupError';
  }
}

/** Users whose plan is kept at most. */
const MAX_CACHED_USERS = 100_000;

/**
 * Asks the host's `plan(userId)` and keeps each answer for `cacheMs`, so that a lookup in the host's
 * billing system is not on every request's path: a cached answer comes back synchronously, concurrent
 * lookups for one user share one call, and a lookup has its own deadline (`timeoutMs`), apart from the
 * store's. Failures are not kept.
 */
export class PlanLookup {
  private readonly cache: LRUCache<string, { assignment: PlanAssignment | undefined }> | undefined;
  private readonly pending = new Map<string, Promise<PlanAssignment | undefined>>();

  constructor(
    private readonly plan: PlanFn,
    private readonly cacheMs: number,
    private readonly timeoutMs: number,
  ) {
    this.cache = cacheMs > 0 ? new LRUCache({ max: MAX_CACHED_USERS, ttl: cacheMs }) : undefined;
  }

  lookup(userId: string): PlanAssignment | undefined | Promise<PlanAssignment | undefined> {
    const hit = this.cache?.get(userId);
    if (hit) return hit.assignment;
    const running = this.pending.get(userId);
    if (running) return running;
    let answer: PlanAssignment | undefined | Promise<PlanAssignment | undefined>;
    try {
      answer = this.plan(userId);
    } catch (e) {
      throw new PlanLookupError('plan(userId) threw', { cause: e });
    }
    if (!isThenable(answer)) {
      this.cache?.set(userId, { assignment: answer });
      return answer;
    }
    const call = this.withDeadline(answer).then((assignment) => {
      this.cache?.set(userId, { assignment });
      return assignment;
    });
    this.pending.set(userId, call);
    const done = () => this.pending.delete(userId);
    call.then(done, done);
    return call;
  }

  private withDeadline(answer: PromiseLike<PlanAssignment | undefined>): Promise<PlanAssignment | undefined> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new PlanLookupError(`plan(userId) did not answer within ${this.timeoutMs} ms`)),
        this.timeoutMs,
      );
      answer.then(
        (assignment) => {
          clearTimeout(timer);
          resolve(assignment);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(new PlanLookupError('plan(userId) failed', { cause: e }));
        },
      );
    });
  }
}

function isThenable<T>(v: unknown): v is PromiseLike<T> {
  return typeof v === 'object' && v !== null && typeof (v as PromiseLike<T>).then === 'function';
}
