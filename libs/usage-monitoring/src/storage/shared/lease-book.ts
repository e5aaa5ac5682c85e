import { newRequestId } from '../../metering/request-id';
import { counterKey } from '../counter-key';
import type { LimitCharge } from '../usage-store.interface';
import { PgBatcher } from './pg-batcher';
import type { ResolvedLeases } from './shared-store.options';

/** A block of one counter's quota this instance took, admitting requests from it in memory. */
interface Lease {
  id: string;
  /** Its counter and the limits it was granted under (`askKey`). */
  key: string;
  userId: string;
  /** Its counter within the user's (`counterKey`), and the limits it was granted under. */
  counter: string;
  max: number;
  shadowMax: number | undefined;
  /** Quota of the block not yet handed to a request. */
  remaining: number;
  /** Requests admitted from it whose settlement has not committed yet. */
  inflight: number;
  /** It admits until then (instance clock), then is given back once `inflight` is 0. */
  until: number;
  retired: boolean;
  /** When it was asked for (instance clock), and its size in `requests` blocks (`nextScale`). */
  askedAt: number;
  scale: number;
}

/**
 * A counter that spends a lease within a quarter of `holdMs` gets one twice the size next, up to this many
 * times `requests`: a hot user at ~1,500 requests a second took 76–99 leases of 64 requests per 3 s, two
 * statements each (take and give back); with growth, 6–9 (bench:cpu on PostgreSQL, 2026-12-07).
 */
export const MAX_LEASE_SCALE = 16;

/**
 * The size (in blocks of `requests`) of the next lease on a counter whose lease admitting now is `prev`
 * (about to be retired): twice `prev`'s if it was spent within a quarter of `holdMs`, up to `MAX_LEASE_SCALE`;
 * the same if spent more slowly; one block if there was none, it ran out of time first, or it was granted
 * under other limits.
 */
function nextScale(prev: Lease | undefined, c: LimitCharge, now: number, holdMs: number): number {
  if (!prev || !grantedUnder(prev, c) || now >= prev.until) return 1;
  return now - prev.askedAt < holdMs / 4 ? Math.min(prev.scale * 2, MAX_LEASE_SCALE) : prev.scale;
}

interface TakeItem {
  id: string;
  u: string;
  p: string;
  sc: string;
  m: string;
  mx: number;
  e: number;
  want: number;
  exp: number;
  /** When it was asked (instance clock); not sent. */
  at: number;
}

/** How the book reaches the database (the shared store's pool, statements and error mapping). */
export interface LeaseDatabase {
  take(items: TakeItem[], now: number, headroom: number): Promise<Map<string, number>>;
  give(ids: string[]): Promise<void>;
}

/**
 * One instance's leases (`storage.leases`). Invariants: the quota handed to requests from a lease never
 * exceeds what the database added to `reserved` for it; a lease goes back (its amount out of `reserved`)
 * only once every request admitted from it has settled (its usage is in `used`), so other instances
 * never see room that is really spent; a counter near its limit gets no lease (`headroom`), and after
 * a refused ask for one block none is asked for `holdMs`, so requests there go straight to the per-request
 * statement. A hot counter's leases grow (`nextScale`), each granted only with room for `headroom` of it.
 */
export class LeaseBook {
  /**
   * User → counter (`counterKey`) → the lease admitting on it now. Looked up for every charge of every
   * request: two map lookups by strings already built, where one key of the user, the counter and its limits
   * (\`askKey\`, a \`JSON.stringify\` per charge) cost ~9 µs per request in a profile (2026-12-06).
   */
  private readonly active = new Map<string, Map<string, Lease>>();
  /** Every lease not yet given back, by id. */
  private readonly held = new Map<string, Lease>();
  /** Ask key (`askKey`) → the take in flight for it (concurrent requests wait for the same one). */
  private readonly asking = new Map<string, Promise<void>>();
  /** Ask key → until when no lease is asked (the last ask was refused). */
  private readonly refused = new Map<string, number>();
  /** Request id → the leases it was admitted from. */
  private readonly byRequest = new Map<string, Lease[]>();
  /** Leases whose return failed (database unavailable): retried by `tick`. */
  private unreturned: string[] = [];
  /** Returns in flight (`close` waits for them). */
  private readonly giving = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private readonly takes: PgBatcher<TakeItem, number>;
  private readonly gives: PgBatcher<string, void>;

  constructor(
    private readonly options: ResolvedLeases,
    private readonly db: LeaseDatabase,
    private readonly ttlMs: number,
  ) {
    this.takes = new PgBatcher<TakeItem, number>(async (items) => {
      const now = Math.max(...items.map((i) => i.at));
      const granted = await this.db.take(items, now, this.options.headroom);
      return items.map((i) => granted.get(i.id) ?? 0);
    });
    this.gives = new PgBatcher<string, void>(async (ids) => {
      try {
        await this.db.give(ids);
      } catch {
        this.unreturned.push(...ids);
      }
      return ids.map(() => undefined);
    });
  }

  /** Leases not yet given back (for tests and stats). */
  get size(): number {
    return this.held.size;
  }

  /**
   * Quota of one of a user's counters that this instance holds in leases and has not handed to a request
   * (part of the counter's `reserved` in the database, though no request uses it).
   */
  unused(userId: string, periodKey: string, scope: string, metric: string): number {
    let n = 0;
    for (const lease of this.held.values()) {
      const [u, p, s, m] = JSON.parse(lease.key) as string[];
      if (u === userId && p === periodKey && s === scope && m === metric) n += lease.remaining;
    }
    return n;
  }

  /**
   * Admits a request from this instance's leases, in memory: true when every one of its charges had a
   * lease with room (all are then charged), false when one had none (nothing is charged).
   */
  admit(userId: string, requestId: string, charges: LimitCharge[], now: number): boolean {
    const leases: Lease[] = [];
    for (const c of charges) {
      const lease = this.activeFor(userId, c);
      if (!lease || lease.remaining < Math.max(c.amount, 1) || leases.includes(lease)) return false;
      if (now >= lease.until) {
        this.retire(lease);
        return false;
      }
      leases.push(lease);
    }
    charges.forEach((c, i) => {
      leases[i].remaining -= c.amount;
      leases[i].inflight++;
    });
    this.byRequest.set(requestId, leases);
    return true;
  }

  /**
   * The counter's lease admitting now, if it was granted under `c`'s limits: a changed plan never admits from
   * an old lease.
   */
  private activeFor(userId: string, c: LimitCharge): Lease | undefined {
    const lease = this.slotOf(userId, c);
    return lease && grantedUnder(lease, c) ? lease : undefined;
  }

  /** The counter's lease admitting now, whatever limits it was granted under. */
  private slotOf(userId: string, c: LimitCharge): Lease | undefined {
    return this.active.get(userId)?.get(counterKey(c.periodKey, c.scope, c.metric));
  }

  /**
   * Asks the database for a lease on every counter of `charges` without one that could admit this
   * request (one ask per counter at a time; none while a recent ask was refused). Resolves when the asks
   * are answered: false when a counter has no lease to give (the database decides this request), true
   * when `admit` may be tried again.
   */
  async take(userId: string, charges: LimitCharge[], now: number): Promise<boolean> {
    const waits: Promise<void>[] = [];
    for (const c of charges) {
      const key = askKey(userId, c);
      const pending = this.asking.get(key);
      if (pending) {
        waits.push(pending);
        continue;
      }
      const slot = this.slotOf(userId, c);
      const current = slot && grantedUnder(slot, c) ? slot : undefined;
      if (current && now < current.until && current.remaining >= Math.max(c.amount, 1)) continue;
      if ((this.refused.get(key) ?? 0) > now) return false; // no lease here: the database decides
      // The counter's lease is spent, expired, or granted under limits that have changed since.
      const scale = nextScale(slot, c, now, this.options.holdMs);
      if (slot) this.retire(slot);
      const want = this.options.requests * Math.max(c.amount, 1) * scale;
      const item: TakeItem = {
        id: newRequestId(),
        u: userId,
        p: c.periodKey,
        sc: c.scope,
        m: c.metric,
        // A shadow limit's counter gets no lease near the shadow limit either: the database then decides,
        // and reports the requests it would have refused.
        mx: c.shadowMax === undefined ? c.max : Math.min(c.max, c.shadowMax),
        e: c.periodEnd,
        want,
        exp: now + this.ttlMs,
        at: now,
      };
      const ask = this.takes.submit(item).then(
        (amount) => {
          if (amount > 0) {
            const lease: Lease = {
              id: item.id,
              key,
              userId,
              counter: counterKey(c.periodKey, c.scope, c.metric),
              max: c.max,
              shadowMax: c.shadowMax,
              remaining: amount,
              inflight: 0,
              until: now + this.options.holdMs,
              retired: false,
              askedAt: now,
              scale,
            };
            this.held.set(lease.id, lease);
            let byCounter = this.active.get(userId);
            if (!byCounter) this.active.set(userId, (byCounter = new Map()));
            const before = byCounter.get(lease.counter);
            if (before) this.retire(before);
            byCounter.set(lease.counter, lease);
          } else if (scale === 1) {
            this.refused.set(key, now + this.options.holdMs);
          } else {
            // A larger block refused: the next ask, at once, is for one block (no lease is left to grow from).
          }
        },
        () => undefined, // the database is unavailable: the per-request path reports it
      );
      const tracked = ask.finally(() => this.asking.delete(key));
      this.asking.set(key, tracked);
      waits.push(tracked);
    }
    await Promise.all(waits);
    return charges.every((c) => this.activeFor(userId, c) !== undefined);
  }

  /**
   * The request's usage committed, or (with `refund`, its charges) it was given back unused: its leases
   * may go back. False when the request was not admitted from leases.
   */
  done(requestId: string, refund?: LimitCharge[]): boolean {
    const leases = this.byRequest.get(requestId);
    if (!leases) return false;
    this.byRequest.delete(requestId);
    leases.forEach((lease, i) => {
      if (refund) lease.remaining += refund[i].amount;
      lease.inflight--;
      if (lease.retired && lease.inflight === 0) this.giveBack(lease);
    });
    return true;
  }

  /** Runs `tick` every half `holdMs` (an unref'd timer) until `close`. */
  start(clock: () => number): void {
    this.timer = setInterval(() => this.tick(clock()), Math.max(10, this.options.holdMs / 2));
    this.timer.unref();
  }

  /**
   * Retires leases whose time is up, gives back those with nothing in flight and retries failed returns.
   * Run every `holdMs` or so, so that quota an idle instance holds goes back without new traffic.
   */
  tick(now: number): void {
    for (const byCounter of this.active.values())
      for (const lease of byCounter.values()) if (now >= lease.until) this.retire(lease);
    for (const [key, until] of this.refused) if (until <= now) this.refused.delete(key);
    if (this.unreturned.length) {
      const ids = this.unreturned;
      this.unreturned = [];
      for (const id of ids) this.give(id);
    }
  }

  /**
   * Stops admitting from every lease, then waits (up to `waitMs`) for their requests to settle and for
   * them to go back. Leases still busy after that are left to the sweeper (after `reservationTtlMs`).
   */
  async close(waitMs = 2_000): Promise<void> {
    clearInterval(this.timer);
    for (const lease of [...this.held.values()]) this.retire(lease);
    const until = Date.now() + waitMs;
    while ((this.held.size > 0 || this.unreturned.length > 0) && Date.now() < until) {
      this.tick(Number.MAX_SAFE_INTEGER);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await Promise.all(this.giving);
  }

  private retire(lease: Lease): void {
    if (lease.retired) return;
    lease.retired = true;
    const byCounter = this.active.get(lease.userId);
    if (byCounter?.get(lease.counter) === lease) {
      byCounter.delete(lease.counter);
      if (byCounter.size === 0) this.active.delete(lease.userId);
    }
    if (lease.inflight === 0) this.giveBack(lease);
  }

  private giveBack(lease: Lease): void {
    if (this.held.delete(lease.id)) this.give(lease.id);
  }

  private give(id: string): void {
    const p = this.gives.submit(id).finally(() => this.giving.delete(p));
    this.giving.add(p);
  }
}

/** Whether `lease` was granted under `c`'s limits: a changed plan never admits from an old lease. */
function grantedUnder(lease: Lease, c: LimitCharge): boolean {
  return lease.max === c.max && lease.shadowMax === c.shadowMax;
}

/** A counter of a user, with the limits a lease of it is asked under (asks in flight, refusals; slow path). */
function askKey(userId: string, c: LimitCharge): string {
  return JSON.stringify([userId, c.periodKey, c.scope, c.metric, c.max, c.shadowMax ?? null]);
}
