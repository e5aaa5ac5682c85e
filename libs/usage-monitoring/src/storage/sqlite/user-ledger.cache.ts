import { LRUCache } from 'lru-cache';
import type { UserLedger } from './user-ledger';

/**
 * The open user databases: at most `cap` at once (open, opening and closing all count), least recently
 * used first out, never one with a request in flight or writes pending. Concurrent first opens of a user
 * share one initialisation; when every slot is busy, openers wait for one to become idle.
 */
export class UserLedgerCache {
  private readonly open: LRUCache<string, UserLedger>;
  private readonly opening = new Map<string, Promise<UserLedger>>();
  private readonly closing = new Map<string, Promise<unknown>>();
  private slotsUsed = 0;
  /** Openers waiting for a slot, first come first served: each freed slot goes to the first. */
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Evictions under way: each frees a slot when its database is closed. */
  private evicting = 0;
  private closed = false;

  constructor(
    private readonly cap: number,
    private readonly openLedger: (userId: string) => Promise<UserLedger>,
    /** Closes an evicted ledger's database (by default `close()`; the store may park it instead). */
    private readonly retire: (ledger: UserLedger) => Promise<unknown> = (l) => l.close(),
  ) {
    this.open = new LRUCache<string, UserLedger>({ max: cap });
  }

  /** Open databases right now (including ones being opened or closed). */
  get openCount(): number {
    return this.slotsUsed;
  }

  /** The user's ledger if it is open (marks it recently used); never opens. */
  get(userId: string): UserLedger | undefined {
    return this.open.get(userId);
  }

  /** Whether the user's database is being opened (or waits for a slot, or for its last close). */
  isOpening(userId: string): boolean {
    return this.opening.has(userId);
  }

  values(): IterableIterator<UserLedger> {
    return this.open.values();
  }

  acquire(userId: string): Promise<UserLedger> {
    const hit = this.open.get(userId);
    if (hit) return Promise.resolve(hit);
    const pending = this.opening.get(userId);
    if (pending) return pending;
    if (this.closed) return Promise.reject(new Error('usage store is closed'));
    const p = this.openWithSlot(userId);
    this.opening.set(userId, p);
    p.then(
      (ledger) => {
        this.opening.delete(userId);
        this.open.set(userId, ledger);
      },
      () => this.opening.delete(userId),
    );
    return p;
  }

  /** A ledger became idle: it may be closed for someone waiting for a slot. */
  notifyIdle(): void {
    if (this.waiters.length > this.evicting) this.evictForWaiters();
  }

  /** Runs `fn` holding one slot (a database opened outside the cache still counts against the cap). */
  async withSlot<T>(fn: () => Promise<T>): Promise<T> {
    await this.takeSlot();
    try {
      return await fn();
    } finally {
      this.releaseSlot();
    }
  }

  async closeAll(): Promise<number> {
    this.closed = true;
    // Openers still waiting for a slot will not get one.
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(new Error('usage store is closed'));
    await Promise.allSettled([...this.opening.values()]);
    await Promise.allSettled([...this.closing.values()]);
    let uncommitted = 0;
    const ledgers = [...this.open.values()];
    this.open.clear();
    const results = await Promise.allSettled(ledgers.map((l) => l.close()));
    for (const r of results) if (r.status !== 'fulfilled' || !r.value) uncommitted++;
    this.slotsUsed = 0;
    return uncommitted;
  }

  private async openWithSlot(userId: string): Promise<UserLedger> {
    const prior = this.closing.get(userId);
    if (prior) await prior; // its last writes must be on disk before we read its counters back
    await this.takeSlot();
    try {
      return await this.openLedger(userId);
    } catch (e) {
      this.releaseSlot();
      throw e;
    }
  }

  private takeSlot(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('usage store is closed'));
    if (this.slotsUsed < this.cap) {
      this.slotsUsed++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.evictForWaiters();
    });
  }

  /** A slot is free: handed to the first waiter (it stays used), or given back. */
  private releaseSlot(): void {
    const next = this.waiters.shift();
    if (next) next.resolve();
    else this.slotsUsed--;
  }

  /**
   * Closes idle databases, least recently used first, one for each waiter no eviction under way will
   * serve. A burst of new users then costs one scan per slot freed, not one per waiter each time.
   */
  private evictForWaiters(): void {
    while (this.waiters.length > this.evicting) {
      const victim = this.leastRecentIdle();
      if (!victim) return;
      this.evict(victim);
    }
  }

  private leastRecentIdle(): UserLedger | undefined {
    for (const ledger of this.open.rvalues()) if (ledger?.isIdle()) return ledger;
    return undefined;
  }

  private evict(ledger: UserLedger): void {
    this.open.delete(ledger.userId);
    this.evicting++;
    const done = this.retire(ledger)
      .catch(() => false)
      .finally(() => {
        this.closing.delete(ledger.userId);
        this.evicting--;
        this.releaseSlot();
      });
    this.closing.set(ledger.userId, done);
  }
}
