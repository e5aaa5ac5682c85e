/** An alert waiting in the outbox for one webhook. */
export interface OutboxRow {
  id: number;
  target: string;
  user_id: string;
  /** The alert as it was committed (JSON of a `UsageAlert`). */
  alert: string;
  attempts: number;
}

/** Where the webhook dispatcher reads and updates the outbox (the per-user store's journal, or the shared database). */
export interface AlertOutbox {
  outboxDue(now: number, limit: number): Promise<OutboxRow[]>;
  outboxDelivered(id: number): Promise<void>;
  outboxFailed(id: number, attempts: number, nextAt: number, parked: boolean, error: string): Promise<void>;
  /** Un-parks the parked rows (of one stored user id, or all): due now, attempts from 0. How many. */
  outboxResend(storedUserId?: string): Promise<number>;
}
