import type { MeteredOptions } from '../decorators/metered.decorator';
import type { MeasuredUsage } from '../metering/usage-extractor';
import type { Reservation } from '../storage/usage-store.interface';

/** What the guard hands the interceptor for one call (kept by request or argument list: see `keepReservation`). @internal */
export interface MeteringContext {
  reservation: Reservation;
  provider: string;
  /** Model from `@Metered`, if any. */
  model: string | undefined;
  /** The route's `@Metered` options (its `usage` reader), when the guard admitted it. */
  route?: MeteredOptions;
  /** What the reservation was made for: charged when the result reports no usage. */
  estimate: MeasuredUsage;
  /** Billing-month key of the reservation (stored on the ledger row). */
  ledgerPeriodKey: string;
  startedAt: number;
  /** Where the call was admitted from (the route's path), its method and request size: its ledger row records them. */
  endpoint: string;
  method: string;
  requestBytes: number;
  /** Set by the interceptor when it takes over: from then on it settles, whatever the client does. */
  intercepted: boolean;
  settled: boolean;
  /** A shadow limit that would have refused the request (its id), recorded on the ledger row. */
  shadowRefused?: string;
}
