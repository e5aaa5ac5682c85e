import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

/** What the receiver does with the next request: answer 2xx, 500, or hold it `holdMs` before answering 200. */
export type ReceiverMode = { answer: 200 } | { answer: 500 } | { holdMs: number };

export interface Received {
  key: string;
  userId: string;
  threshold: number;
  limitId: string;
  periodKey: string;
  attempt: number;
  signatureOk: boolean;
  /** The status the receiver answered (0: the request was held and the caller gave up first). */
  status: number;
}

/**
 * A real HTTP receiver on 127.0.0.1 for alert webhooks. It checks every request's signature the way the
 * README tells a receiver to, records it, and answers as `mode(n)` says for the n-th request (0-based);
 * `down()` closes the port (connections refused) until `up()`.
 */
export class WebhookReceiver {
  readonly received: Received[] = [];
  port = 0;
  private server: Server | undefined;
  private n = 0;

  constructor(
    private readonly secret: string,
    private readonly mode: (n: number) => ReceiverMode = () => ({ answer: 200 }),
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}/hooks/usage`;
  }

  async up(): Promise<void> {
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.port = (server.address() as { port: number }).port;
    this.server = server;
  }

  async down(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }

  /** Keys acknowledged (answered 2xx), in the order they were first acknowledged. */
  acknowledged(): Received[] {
    const seen = new Set<string>();
    return this.received.filter((r) => r.status === 200 && !seen.has(r.key) && seen.add(r.key));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    // The README's check: HMAC-SHA256 of the raw body with the shared secret, compared in constant time.
    const expected = Buffer.from(`sha256=${createHmac('sha256', this.secret).update(raw).digest('hex')}`);
    const given = Buffer.from(String(req.headers['x-usage-signature'] ?? ''));
    const signatureOk = given.length === expected.length && timingSafeEqual(given, expected);
    const body = JSON.parse(raw.toString('utf8')) as {
      id: string;
      alert: { userId: string; threshold: number; limitId: string; periodKey: string };
    };
    const record: Received = {
      key: String(req.headers['idempotency-key']),
      userId: body.alert.userId,
      threshold: body.alert.threshold,
      limitId: body.alert.limitId,
      periodKey: body.alert.periodKey,
      attempt: Number(req.headers['x-usage-delivery-attempt']),
      signatureOk: signatureOk && body.id === req.headers['idempotency-key'],
      status: 0,
    };
    this.received.push(record);
    const mode = this.mode(this.n++);
    if ('holdMs' in mode) {
      // Held, until the time is up or the caller hangs up (a timeout, a killed process).
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, mode.holdMs);
        timer.unref();
        res.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (res.destroyed || res.writableEnded) return;
    }
    record.status = 'answer' in mode ? mode.answer : 200;
    res.writeHead(record.status, { 'content-type': 'application/json' }).end('{}');
  }
}
