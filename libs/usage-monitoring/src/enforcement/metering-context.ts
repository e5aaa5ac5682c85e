import type { Reservation } from '../storage/usage-store.interface';

/** What the guard hands the interceptor on the request object. @internal */
export interface MeteringContext {
  reservation: Reservation;
  provider: string;
  /** Model from `@Metered`, if any. */
  model: string | undefined;
  /** Billing-month key of the reservation (stored on the ledger row). */
  ledgerPeriodKey: string;
  startedAt: number;
  /** Set by the interceptor when it takes over: from then on it settles, whatever the client does. */
  intercepted: boolean;
  settled: boolean;
}
