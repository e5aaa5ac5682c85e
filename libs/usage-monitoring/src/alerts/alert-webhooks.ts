import { Inject, Injectable, Logger } from '@nestjs/common';
import { createHash, createHmac } from 'node:crypto';
import type { Subscription } from 'rxjs';
import { UsageMetrics } from '../metrics/usage-metrics';
import type { AlertOutbox, OutboxRow } from './alert-outbox';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions, ResolvedWebhook } from '../usage-monitoring.normalized-options';
import type { UsageAlert } from './usage-alert.interface';
import { UsageAlerts } from './usage-alerts.service';

/** Header of the body's signature: `sha256=<hex HMAC-SHA256 of the raw body, keyed with the webhook's secret>`. */
export const SIGNATURE_HEADER = 'x-usage-signature';
/** Header of the alert's idempotency key (the same on every attempt). */
export const IDEMPOTENCY_HEADER = 'idempotency-key';
/** Header of the attempt number (1, 2, …). */
export const ATTEMPT_HEADER = 'x-usage-delivery-attempt';

/** The body POSTed for an alert. */
export interface AlertWebhookBody {
  /** The idempotency key: the same for every attempt and webhook of this alert. */
  id: string;
  type: 'usage.alert';
  alert: UsageAlert;
}

/** An alert's idempotency key: SHA-256 (hex) of its user, period, limit and threshold. */
export function alertKey(a: Pick<UsageAlert, 'userId' | 'periodKey' | 'limitId' | 'threshold'>): string {
  return createHash('sha256')
    .update(`${a.userId}\u0000${a.periodKey}\u0000${a.limitId}\u0000${a.threshold}`)
    .digest('hex');
}

/** Deliveries in flight at most (one per webhook and user at a time). */
const MAX_IN_FLIGHT = 32;
const IDLE_POLL_MS = 1_000;

/**
 * Delivers the alert outbox to the webhooks: for each webhook and user, the oldest alert first, the next
 * only once it is acknowledged (2xx) or parked; different users in parallel. A failed attempt (network
 * error, timeout, non-2xx) is retried after `initialDelayMs × 2^(attempt−1)` (at most `maxDelayMs`), of
 * which a random half (jitter); after `maxAttempts` the alert is parked: kept in the outbox, counted and logged.
 * Woken by each new alert; otherwise polls once a second for retries that come due.
 */
@Injectable()
export class AlertWebhooks {
  private readonly logger = new Logger('UsageMonitoring');
  private outbox: AlertOutbox | undefined;
  private readonly byUrl = new Map<string, ResolvedWebhook>();
  private timer: NodeJS.Timeout | undefined;
  private pumping: Promise<void> | undefined;
  private again = false;
  /** Outbox rows being delivered, and their deliveries. */
  private readonly busy = new Set<number>();
  private readonly deliveries = new Set<Promise<void>>();
  /**
   * Rows whose delivery ended while a read of due rows was in flight: that read may return them as they
   * were before (an acknowledged row still due, a failed one at its old attempt), so it skips them.
   */
  private readonly endedDuringRead = new Set<number>();
  private reading = false;
  private nextRetryAt = Infinity;
  private stopped = false;
  private subscription: Subscription | undefined;
  private readonly inFlight = new Set<AbortController>();

  /** @internal Nest injects these. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) options: NormalizedUsageOptions,
    private readonly alerts: UsageAlerts,
    private readonly metrics: UsageMetrics,
  ) {
    for (const w of options.webhooks) this.byUrl.set(w.url, w);
  }

  /**
   * How long an instance holds a row it is delivering (shared store): the longest webhook timeout and 5 s,
   * so that another instance takes it over only once this one has surely given up.
   */
  get claimMs(): number {
    return Math.max(0, ...[...this.byUrl.values()].map((w) => w.timeoutMs)) + 5_000;
  }

  /** Starts delivering from `outbox` (after the store opened); nothing when no webhook is configured. */
  start(outbox: AlertOutbox): void {
    if (this.byUrl.size === 0 || this.outbox) return;
    this.outbox = outbox;
    this.subscription = this.alerts.alerts$.subscribe(() => this.wake());
    this.wake();
  }

  /**
   * Sends the parked alerts again (of one user, or all), from their first attempt, in order per user as
   * ever. Resolves with how many were parked; 0 without webhooks.
   */
  async resendParked(userId?: string): Promise<number> {
    if (!this.outbox) return 0;
    const n = await this.outbox.outboxResend(userId);
    if (n > 0) this.wake();
    return n;
  }

  /** Stops: no new attempt starts; attempts in flight are aborted (retried after a restart). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.subscription?.unsubscribe();
    clearTimeout(this.timer);
    for (const c of this.inFlight) c.abort();
    await this.pumping;
    await Promise.all([...this.deliveries]);
  }

  /**
   * Looks for rows due now and starts their deliveries, without waiting for those already in flight: a
   * slow endpoint for one user never holds another user's alert back. Runs again whenever a delivery
   * ends or an alert is published; otherwise at the earliest retry, or a second from now.
   */
  private wake(): void {
    if (this.stopped || !this.outbox) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pumping = this.pump().finally(() => {
      this.pumping = undefined;
      if (this.stopped) return;
      if (this.again) return this.wake();
      const wait = Math.min(IDLE_POLL_MS, Math.max(10, this.nextRetryAt - Date.now()));
      this.nextRetryAt = Infinity;
      this.timer = setTimeout(() => this.wake(), wait);
      this.timer.unref();
    });
  }

  private async pump(): Promise<void> {
    do {
      this.again = false;
      if (this.busy.size >= MAX_IN_FLIGHT) return;
      let due: OutboxRow[];
      this.reading = true;
      try {
        // Heads in flight come back too (the per-user store does not claim rows): ask for room beyond them.
        due = await this.outbox!.outboxDue(Date.now(), MAX_IN_FLIGHT + this.busy.size);
      } catch (e) {
        this.logger.error(`alert outbox unreadable: ${(e as Error).message}`);
        this.endedDuringRead.clear();
        return;
      } finally {
        this.reading = false;
      }
      const stale = this.endedDuringRead;
      for (const row of due) {
        if (this.stopped || this.busy.size >= MAX_IN_FLIGHT) break;
        // A stale row is read again in the next pass, which a delivery's end always asks for.
        if (this.busy.has(row.id) || stale.has(row.id)) continue;
        this.busy.add(row.id);
        const delivery = this.deliver(row).finally(() => {
          this.busy.delete(row.id);
          if (this.reading) this.endedDuringRead.add(row.id);
          this.deliveries.delete(delivery);
          this.wake();
        });
        this.deliveries.add(delivery);
      }
      stale.clear();
    } while (this.again && !this.stopped);
  }

  private async deliver(row: OutboxRow): Promise<void> {
    const hook = this.byUrl.get(row.target);
    if (!hook) return; // its rows were dropped at start-up; a stale read
    const alert = JSON.parse(row.alert) as UsageAlert;
    const body = JSON.stringify({
      id: alertKey(alert),
      type: 'usage.alert',
      alert,
    } satisfies AlertWebhookBody);
    const attempt = row.attempts + 1;
    const controller = new AbortController();
    this.inFlight.add(controller);
    const timeout = setTimeout(() => controller.abort(), hook.timeoutMs);
    let failure: string | undefined;
    try {
      const res = await fetch(hook.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'nestjs-usage-monitoring',
          [IDEMPOTENCY_HEADER]: alertKey(alert),
          [SIGNATURE_HEADER]: `sha256=${createHmac('sha256', hook.secret).update(body).digest('hex')}`,
          [ATTEMPT_HEADER]: String(attempt),
        },
        body,
        signal: controller.signal,
        redirect: 'manual',
      });
      await res.arrayBuffer().catch(() => undefined);
      if (res.status < 200 || res.status > 299) failure = `HTTP ${res.status}`;
    } catch (e) {
      failure = controller.signal.aborted
        ? this.stopped
          ? 'aborted at shutdown'
          : `no answer within ${hook.timeoutMs} ms`
        : ((e as Error & { cause?: { code?: string } }).cause?.code ?? (e as Error).message);
    } finally {
      clearTimeout(timeout);
      this.inFlight.delete(controller);
    }
    if (failure !== undefined && this.stopped) return; // not an attempt that counts: retried after a restart
    try {
      if (failure === undefined) {
        await this.outbox!.outboxDelivered(row.id);
        this.metrics.webhookDelivery('delivered');
        return;
      }
      const parked = attempt >= hook.maxAttempts;
      const backoff = Math.min(hook.maxDelayMs, hook.initialDelayMs * 2 ** Math.min(30, attempt - 1));
      const retryAt = Date.now() + backoff / 2 + (Math.random() * backoff) / 2;
      await this.outbox!.outboxFailed(row.id, attempt, retryAt, parked, failure);
      if (!parked) this.nextRetryAt = Math.min(this.nextRetryAt, retryAt);
      this.metrics.webhookDelivery(parked ? 'parked' : 'failed');
      if (parked) {
        this.logger.error(
          `alert webhook ${new URL(hook.url).origin}: alert ${alertKey(alert).slice(0, 12)} parked after ${attempt} attempts (${failure}); the user's next alerts go on`,
        );
      }
    } catch (e) {
      this.logger.error(`alert outbox could not be updated: ${(e as Error).message}`);
    }
  }
}
