import { Agent } from 'node:http';
import { join } from 'node:path';
import request from 'supertest';
import { alertKey, UsageAdminService } from '@app/usage-monitoring';
import { JOURNAL_FILE } from '@app/usage-monitoring/storage/sqlite/usage-journal';
import { createTestApp, tempDataDir, type TestApp } from './utils/create-test-app';
import { postStatus } from './utils/post-status';
import { querySqliteFile } from './utils/sqlite-file';
import { spawnServer, type ServerProcess } from './utils/spawn-server';
import { bearer } from './utils/test-controllers';
import { createSchema, describePostgres, describeStore, dropSchema, sql, STORE } from './utils/test-store';
import { WebhookReceiver, type Received } from './utils/webhook-receiver';

jest.setTimeout(60_000);

const SECRET = 'whsec-test-0123456789abcdef';
const USERS = ['ann', 'bob', 'cyd'];
/** The free test plan has 5 AI text calls a month: the 4th call crosses 80 %, the 5th 90 and 100 %. */
const CALLS = 5;
const chat = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };

async function until(check: () => boolean, ms: number, what: string, state = () => ''): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} ${state()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Every alert acknowledged exactly once by key (the 3 thresholds of each user's AI-text limit), every
 * request signed, and per user in order: no attempt of a threshold before the lower ones were acknowledged.
 */
function expectAllDelivered(received: Received[], acknowledged: Received[]): void {
  expect(received.every((r) => r.signatureOk)).toBe(true);
  for (const r of received) expect(r.key).toBe(alertKey(r));
  const keys = acknowledged.map((r) => `${r.userId}:${r.limitId}:${r.threshold}`).sort();
  expect(keys).toEqual(
    USERS.flatMap((u) => [80, 90, 100].map((t) => `${u}:ai_text:calls:month:${t}`)).sort(),
  );
  for (const user of USERS) {
    const acked = new Set<number>();
    for (const r of received.filter((x) => x.userId === user)) {
      for (const lower of [80, 90, 100].filter((t) => t < r.threshold))
        expect([user, lower, acked.has(lower)]).toEqual([user, lower, true]);
      if (r.status === 200) acked.add(r.threshold);
    }
  }
}

/** Every receiver a test starts, closed after it whatever happened (an open one keeps Jest from exiting). */
const receivers: WebhookReceiver[] = [];
afterEach(async () => {
  for (const r of receivers.splice(0)) await r.down();
});
function receiverWith(mode?: ConstructorParameters<typeof WebhookReceiver>[1]): WebhookReceiver {
  const r = new WebhookReceiver(SECRET, mode);
  receivers.push(r);
  return r;
}

/** A query on the outbox: the journal's database (per-user store) or the shared schema. */
async function outbox<T>(t: TestApp, query: string): Promise<T[]> {
  if (t.store === 'postgres') return sql<T>(t.schema!, query);
  return querySqliteFile<T>(join(t.dataDir, JOURNAL_FILE), query);
}
const outboxRows = async (t: TestApp) =>
  (await outbox<{ n: number }>(t, 'SELECT COUNT(*) AS n FROM usage_alert_outbox')).map((r) => ({
    n: Number(r.n),
  }));

describeStore(`alert webhooks: outbox, signature, retries, order per user (${STORE})`, () => {
  let t: TestApp | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  it('delivers every alert once by key after the receiver was down, answered 500 and was too slow', async () => {
    // Requests 0–2 get a 500, 3–4 are held past the 300 ms timeout, the rest 200.
    const receiver = receiverWith((n) =>
      n < 3 ? { answer: 500 } : n < 5 ? { holdMs: 1_000 } : { answer: 200 },
    );
    await receiver.up();
    await receiver.down(); // down until the traffic is over: connections refused
    t = await createTestApp({
      usage: {
        alerts: {
          webhook: {
            url: receiver.url,
            secret: SECRET,
            timeoutMs: 300,
            retry: { initialDelayMs: 50, maxDelayMs: 400 },
          },
        },
      },
    });
    const statuses = await Promise.all(
      USERS.map(async (u) => {
        const out: number[] = [];
        for (let i = 0; i < CALLS + 1; i++) {
          out.push(
            (
              await request(t!.url)
                .post('/openai/v1/chat/completions')
                .set('authorization', bearer(u))
                .send(chat)
            ).status,
          );
        }
        return out;
      }),
    );
    expect(statuses).toEqual(USERS.map(() => [200, 200, 200, 200, 200, 429]));
    // The outbox holds them, committed with the usage (the journal's database), while nobody answers.
    await new Promise((r) => setTimeout(r, 300));
    expect(await outboxRows(t)).toEqual([{ n: 9 }]);
    expect(receiver.received).toEqual([]);

    await receiver.up();
    await until(() => receiver.acknowledged().length === 9, 20_000, '9 acknowledged alerts');
    expectAllDelivered(receiver.received, receiver.acknowledged());
    expect(receiver.received.slice(0, 5).map((r) => r.status)).toEqual([500, 500, 500, 0, 0]);
    expect(receiver.received.filter((r) => r.status === 200)).toHaveLength(9);
    await new Promise((r) => setTimeout(r, 100));
    expect(await outboxRows(t)).toEqual([{ n: 0 }]);
    await receiver.down();
  });

  it('parks an alert after maxAttempts and goes on with the same user’s next one; the admin API sends parked ones again', async () => {
    // One endpoint fails its first 9 requests (every alert, 3 attempts each), the other none.
    const receiver = receiverWith();
    const failing = receiverWith((n) => (n < 9 ? { answer: 500 } : { answer: 200 }));
    await receiver.up();
    await failing.up();
    t = await createTestApp({
      usage: {
        alerts: {
          webhook: [
            {
              url: failing.url,
              secret: SECRET,
              retry: { initialDelayMs: 20, maxDelayMs: 40, maxAttempts: 3 },
            },
            { url: receiver.url, secret: SECRET, retry: { initialDelayMs: 20, maxDelayMs: 40 } },
          ],
        },
      },
    });
    for (let i = 0; i < CALLS; i++) {
      expect(
        (
          await request(t.url)
            .post('/openai/v1/chat/completions')
            .set('authorization', bearer('ann'))
            .send(chat)
        ).status,
      ).toBe(200);
    }
    // The failing endpoint: each of the 3 alerts tried 3 times, in order, then parked; the other got all 3.
    await until(() => failing.received.length === 9, 10_000, '9 attempts at the failing endpoint');
    await until(() => receiver.acknowledged().length === 3, 10_000, '3 acknowledged alerts');
    expect(failing.received.map((r) => [r.threshold, r.attempt])).toEqual([
      [80, 1],
      [80, 2],
      [80, 3],
      [90, 1],
      [90, 2],
      [90, 3],
      [100, 1],
      [100, 2],
      [100, 3],
    ]);
    expect(receiver.acknowledged().map((r) => r.threshold)).toEqual([80, 90, 100]);
    await new Promise((r) => setTimeout(r, 200));
    expect(failing.received).toHaveLength(9);
    expect(
      (
        await outbox<{ target: string; parked: number | boolean; attempts: number; last_error: string }>(
          t,
          'SELECT target, parked, attempts, last_error FROM usage_alert_outbox ORDER BY id',
        )
      ).map((r) => ({ ...r, parked: Number(r.parked) })),
    ).toEqual(
      [80, 90, 100].map(() => ({ target: failing.url, parked: 1, attempts: 3, last_error: 'HTTP 500' })),
    );
    // The endpoint is fixed: the admin sends the parked alerts again, from their first attempt, in order.
    const admin = t.app.get(UsageAdminService);
    expect(await admin.resendParkedAlerts('someone-else')).toBe(0);
    expect(await admin.resendParkedAlerts('ann')).toBe(3);
    await until(() => failing.acknowledged().length === 3, 10_000, '3 alerts sent again');
    expect(failing.received.slice(9).map((r) => [r.threshold, r.attempt, r.status])).toEqual([
      [80, 1, 200],
      [90, 1, 200],
      [100, 1, 200],
    ]);
    expect(await outboxRows(t)).toEqual([{ n: 0 }]);
    expect(await admin.resendParkedAlerts()).toBe(0);
    await receiver.down();
    await failing.down();
  });
});

describeStore(`alert webhooks: SIGKILL with alerts pending (${STORE})`, () => {
  let server: ServerProcess | undefined;
  let schema: string | undefined;
  afterEach(async () => {
    await server?.stop('SIGKILL');
    if (schema) await dropSchema(schema);
  });

  it('loses none: the restarted app delivers every alert the killed one had not', async () => {
    let release = false;
    const receiver = receiverWith(() => (release ? { answer: 200 } : { holdMs: 30_000 }));
    await receiver.up();
    schema = STORE === 'postgres' ? await createSchema() : undefined;
    const env = {
      ...(schema ? { USAGE_TEST_SCHEMA: schema } : { USAGE_TEST_DATA_DIR: tempDataDir() }),
      USAGE_TEST_WEBHOOK: JSON.stringify({
        url: receiver.url,
        secret: SECRET,
        // Long enough that a delivery held by the receiver is still in flight at the kill (the shared store's
        // claims of the killed instance run out after timeoutMs + 5 s: shorter there).
        timeoutMs: STORE === 'postgres' ? 2_000 : 20_000,
        retry: { initialDelayMs: 50, maxDelayMs: 200 },
      }),
    };
    server = await spawnServer(env);
    const agent = new Agent({ keepAlive: true });
    const url = `${server.url}/openai/v1/chat/completions`;
    const calls = async (u: string) => {
      for (let i = 0; i < CALLS; i++) expect(await postStatus(url, agent, u, { max_tokens: 5 })).toBe(200);
    };
    // (A delivery the receiver holds past timeoutMs is tried again: count users, not requests.)
    const inFlight = (n: number) =>
      until(
        () => new Set(receiver.received.map((r) => r.userId)).size === n,
        10_000,
        `deliveries in flight for ${n} user(s)`,
        () => JSON.stringify(receiver.received),
      );
    // The first user's 80 % alert is held by the receiver (no answer)…
    await calls(USERS[0]);
    await inFlight(1);
    // …and holds nobody else's back: the others' first alerts go out while it waits.
    await Promise.all(USERS.slice(1).map(calls));
    await inFlight(USERS.length);
    agent.destroy();
    await server.stop('SIGKILL');
    expect(receiver.acknowledged()).toEqual([]);

    release = true;
    server = await spawnServer(env);
    await until(
      () => receiver.acknowledged().length === 9,
      20_000,
      '9 acknowledged alerts after the restart',
    );
    expectAllDelivered(receiver.received, receiver.acknowledged());
    // The attempts the kill cut short were answered by nobody; each was sent again after the restart.
    const cut = receiver.received.filter((r) => r.status === 0);
    expect(new Set(cut.map((r) => `${r.userId}:${r.threshold}`))).toEqual(
      new Set(USERS.map((u) => `${u}:80`)),
    );
    await receiver.down();
  });
});

describePostgres('alert webhooks: two instances on one shared database', () => {
  const apps: TestApp[] = [];
  afterEach(async () => {
    for (const a of apps.splice(0)) await a.close();
  });

  it('deliver each alert once, in order per user: an instance claims a row before it sends it', async () => {
    const receiver = receiverWith();
    await receiver.up();
    const usage = {
      alerts: {
        webhook: { url: receiver.url, secret: SECRET, retry: { initialDelayMs: 20, maxDelayMs: 40 } },
      },
    };
    apps.push(await createTestApp({ usage }));
    apps.push(await createTestApp({ usage, schema: apps[0].schema }));
    // Each user's calls alternate between the instances.
    await Promise.all(
      USERS.map(async (u) => {
        for (let i = 0; i < CALLS; i++) {
          const res = await request(apps[i % 2].url)
            .post('/openai/v1/chat/completions')
            .set('authorization', bearer(u))
            .send(chat);
          expect(res.status).toBe(200);
        }
      }),
    );
    await until(() => receiver.acknowledged().length === 9, 20_000, '9 acknowledged alerts');
    await new Promise((r) => setTimeout(r, 300));
    expectAllDelivered(receiver.received, receiver.acknowledged());
    expect(receiver.received).toHaveLength(9); // no alert sent twice
    expect(await outboxRows(apps[0])).toEqual([{ n: 0 }]);
    await receiver.down();
  });
});
