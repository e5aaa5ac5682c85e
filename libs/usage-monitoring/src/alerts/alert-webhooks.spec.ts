import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Subject } from 'rxjs';
import type { UsageMetrics } from '../metrics/usage-metrics';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { AlertOutbox, OutboxRow } from './alert-outbox';
import { AlertWebhooks, ATTEMPT_HEADER, IDEMPOTENCY_HEADER } from './alert-webhooks';
import type { UsageAlert } from './usage-alert.interface';
import type { UsageAlerts } from './usage-alerts.service';

const ALERT: UsageAlert = {
  userId: 'ann',
  periodKey: 'month:2026-12-01',
  limitId: 'ai_text:calls:month',
  scope: 'ai_text',
  metric: 'calls',
  period: 'month',
  threshold: 80,
  used: 4,
  max: 5,
  at: 0,
};

/**
 * An outbox in memory whose reads see the rows as they were when the read began and answer `readMs` later,
 * as a read of the journal's database on the thread pool does while a commit lands. (The per-user store's
 * outbox gives this race only now and then under load: the end-to-end webhook tests met it once in a run.)
 */
class SlowReadOutbox implements AlertOutbox {
  readonly rows = new Map<number, OutboxRow>();
  reads = 0;
  constructor(
    private readonly readMs: (read: number) => number,
    private readonly onRead: (read: number) => void,
  ) {}

  outboxDue(): Promise<OutboxRow[]> {
    const read = ++this.reads;
    const snapshot = [...this.rows.values()].map((r) => ({ ...r }));
    this.onRead(read);
    return new Promise((resolve) => setTimeout(() => resolve(snapshot), this.readMs(read)));
  }
  outboxDelivered(id: number): Promise<void> {
    this.rows.delete(id);
    return Promise.resolve();
  }
  outboxFailed(id: number, attempts: number): Promise<void> {
    this.rows.get(id)!.attempts = attempts;
    return Promise.resolve();
  }
  outboxResend(): Promise<number> {
    return Promise.resolve(0);
  }
}

describe('AlertWebhooks', () => {
  let server: Server;
  const received: { key: string; attempt: string }[] = [];
  beforeAll(async () => {
    server = createServer((req, res) => {
      received.push({
        key: String(req.headers[IDEMPOTENCY_HEADER]),
        attempt: String(req.headers[ATTEMPT_HEADER]),
      });
      req.resume();
      req.on('end', () => setTimeout(() => res.writeHead(200).end(), 10));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  });
  afterAll(() => new Promise((r) => server.close(r)));

  it('does not send an alert again that a read begun before its acknowledgement still returns', async () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    const alerts = new Subject<UsageAlert>();
    const options = {
      webhooks: [{ url, secret: 's', timeoutMs: 2_000, initialDelayMs: 50, maxDelayMs: 100, maxAttempts: 3 }],
    } as unknown as NormalizedUsageOptions;
    const metrics = { webhookDelivery: () => undefined } as unknown as UsageMetrics;
    const webhooks = new AlertWebhooks(options, { alerts$: alerts } as unknown as UsageAlerts, metrics);
    // Read 1 answers at once with the row; an alert published meanwhile asks for read 2, which begins while
    // the row's delivery is in flight and answers after it was acknowledged (about 10 ms): with the row.
    const outbox = new SlowReadOutbox(
      (read) => (read === 2 ? 200 : 0),
      (read) => {
        if (read === 1) queueMicrotask(() => alerts.next(ALERT));
      },
    );
    outbox.rows.set(1, { id: 1, target: url, user_id: 'ann', alert: JSON.stringify(ALERT), attempts: 0 });
    webhooks.start(outbox);
    try {
      await new Promise((r) => setTimeout(r, 600));
      expect(outbox.reads).toBeGreaterThanOrEqual(3);
      expect(outbox.rows.size).toBe(0);
      expect(received.map((r) => r.attempt)).toEqual(['1']);
    } finally {
      await webhooks.stop();
    }
  });
});
