import type { Database } from 'sqlite3';
import type { DataSource } from 'typeorm';
import type { UsageAlert } from '../../alerts/usage-alert.interface';
import { UsageStoreError } from '../usage-store.error';
import type {
  ApiRequestRecord,
  CounterKey,
  CounterSnapshot,
  LimitCharge,
  ReserveRequest,
  ReserveResult,
  Reservation,
  Settlement,
  SettleResult,
} from '../usage-store.interface';
import { actualOf, crossedThresholds } from '../settlement';
import { type CounterDelta, SqliteBatchWriter } from './sqlite-batch-writer';

interface Counter {
  used: number;
  reserved: number;
  periodEnd: number;
}

const counterKey = (periodKey: string, scope: string, metric: string) =>
  `${periodKey}\u0001${scope}\u0001${metric}`;

/**
 * One open user database. Its counters live here, in memory, as the single authority (one process owns
 * the dataDir), so a reservation is a synchronous check-and-add: atomic by construction, no database
 * round trip. Settlements reach the database through the group-commit writer.
 */
export class UserLedger {
  private readonly counters = new Map<string, Counter>();
  private inFlight = 0;
  private writer!: SqliteBatchWriter;

  private constructor(
    readonly userId: string,
    readonly dataSource: DataSource,
    private readonly onIdle: (ledger: UserLedger) => void,
    private readonly stallMs: number,
  ) {}

  static async open(
    userId: string,
    dataSource: DataSource,
    now: number,
    onIdle: (ledger: UserLedger) => void,
    stallMs: number,
  ): Promise<UserLedger> {
    const ledger = new UserLedger(userId, dataSource, onIdle, stallMs);
    const db = (dataSource.driver as unknown as { databaseConnection: Database }).databaseConnection;
    ledger.writer = new SqliteBatchWriter(db, userId, () => ledger.notifyIfIdle());
    const rows: { period_key: string; scope: string; metric: string; used: number; period_end: number }[] =
      await dataSource.query(
        'SELECT period_key, scope, metric, used, period_end FROM usage_counters WHERE user_id = ? AND period_end > ?',
        [userId, now],
      );
    for (const r of rows) {
      ledger.counters.set(counterKey(r.period_key, r.scope, r.metric), {
        used: Number(r.used),
        reserved: 0,
        periodEnd: Number(r.period_end),
      });
    }
    return ledger;
  }

  /** No request in flight and nothing waiting to commit: safe to close. */
  isIdle(): boolean {
    return this.inFlight === 0 && this.writer.pending === 0;
  }

  /** The last commit failed and has not yet succeeded on retry. */
  get failing(): boolean {
    return this.writer.failure !== null;
  }

  get pendingWrites(): number {
    return this.writer.pending;
  }

  reserve(req: ReserveRequest): ReserveResult {
    if (this.writer.failure) {
      throw new UsageStoreError('operational_error', 'usage writes are failing; refusing new reservations', {
        cause: this.writer.failure,
      });
    }
    const since = this.writer.busySince;
    if (since !== 0 && Date.now() - since > this.stallMs) {
      throw new UsageStoreError('operational_error', 'a usage commit is stalled; refusing new reservations');
    }
    const { charges } = req;
    for (const c of charges) {
      const ctr = this.counter(c, req.now);
      // `max(amount, 1)`: an exhausted limit refuses even a request estimated at zero.
      if (ctr.used + ctr.reserved + (c.amount > 0 ? c.amount : 1) > c.max) {
        return { admitted: false, exceeded: { charge: c, used: ctr.used, reserved: ctr.reserved } };
      }
    }
    for (const c of charges) this.counter(c, req.now).reserved += c.amount;
    this.inFlight++;
    return {
      admitted: true,
      reservation: {
        requestId: req.requestId,
        userId: req.userId,
        provider: req.provider,
        charges,
        createdAt: req.now,
      },
    };
  }

  release(reservation: Reservation): void {
    for (const c of reservation.charges) this.counter(c, reservation.createdAt).reserved -= c.amount;
    this.inFlight--;
    this.notifyIfIdle();
  }

  settle(reservation: Reservation, s: Settlement): Promise<SettleResult> {
    const deltas: CounterDelta[] = [];
    const alerts: UsageAlert[] = [];
    for (const c of reservation.charges) {
      const ctr = this.counter(c, reservation.createdAt);
      ctr.reserved -= c.amount;
      const actual = actualOf(s.actual, c.metric);
      if (actual <= 0) continue;
      const before = ctr.used;
      ctr.used += actual;
      deltas.push({
        periodKey: c.periodKey,
        scope: c.scope,
        metric: c.metric,
        periodEnd: c.periodEnd,
        amount: actual,
      });
      for (const threshold of crossedThresholds(before, ctr.used, c.max)) {
        alerts.push({
          userId: this.userId,
          limitId: c.limitId,
          scope: c.scope,
          metric: c.metric,
          period: c.period,
          periodKey: c.periodKey,
          threshold,
          used: ctr.used,
          max: c.max,
          at: s.event.occurredAt,
        });
      }
    }
    return new Promise((resolve) => {
      this.writer.enqueue({
        event: s.event,
        deltas,
        alerts: alerts.length ? alerts : undefined,
        done: () => {
          this.inFlight--;
          resolve({ alerts });
          this.notifyIfIdle();
        },
      });
    });
  }

  recordRequest(row: ApiRequestRecord): Promise<void> {
    this.inFlight++;
    return new Promise((resolve) =>
      this.writer.enqueue({
        request: row,
        done: () => {
          this.inFlight--;
          resolve();
          this.notifyIfIdle();
        },
      }),
    );
  }

  snapshot(keys: CounterKey[]): CounterSnapshot[] {
    return keys.map((k) => {
      const ctr = this.counters.get(counterKey(k.periodKey, k.scope, k.metric));
      return { ...k, used: ctr?.used ?? 0, reserved: ctr?.reserved ?? 0 };
    });
  }

  /** Commits what is queued, then closes the database. Returns false when writes were left uncommitted. */
  async close(): Promise<boolean> {
    const drained = await this.writer.drain();
    await this.writer.finalize();
    await this.dataSource.destroy();
    return drained;
  }

  private counter(c: LimitCharge, now: number): Counter {
    const key = counterKey(c.periodKey, c.scope, c.metric);
    let ctr = this.counters.get(key);
    if (!ctr) {
      this.pruneEnded(now);
      ctr = { used: 0, reserved: 0, periodEnd: c.periodEnd };
      this.counters.set(key, ctr);
    }
    return ctr;
  }

  /** Drops counters of periods that have ended (runs only when a new counter appears). */
  private pruneEnded(now: number): void {
    for (const [key, ctr] of this.counters) {
      if (ctr.periodEnd <= now && ctr.reserved === 0) this.counters.delete(key);
    }
  }

  private notifyIfIdle(): void {
    if (this.isIdle()) this.onIdle(this);
  }
}
