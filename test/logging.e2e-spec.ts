import request from 'supertest';
import { createTestApp, planFromUserId, type TestApp } from './utils/create-test-app';
import { CapturingLogger } from './utils/capturing-logger';
import { bearer } from './utils/test-controllers';
import { describeStore } from './utils/test-store';

// Control characters a hostile client may put in the values that reach log lines: a forged log line
// after a newline, terminal escape sequences, a carriage return that hides what came before.
const HOSTILE = 'x\n[Nest] 1  - LOG forged line\r\u001b[31mred\u001b[0m\u0007';
const BODY_SECRET = 'BODY-SECRET-7f3a';

describeStore('log lines', () => {
  let t: TestApp;
  const logger = new CapturingLogger();
  beforeAll(async () => {
    t = await createTestApp({
      logger,
      usage: {
        unknownModels: 'highest-price',
        // The host's plan function returns a name the catalog does not have (from its own data).
        plan: (id) => (id.startsWith('hostile-plan') ? `p-${HOSTILE}` : planFromUserId(id)),
      },
    });
  });
  afterAll(() => t.close());

  it('escape control characters in user-supplied values and never carry a request body', async () => {
    const post = (user: string, body: object) =>
      request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user)).send(body);
    const body = (model?: string) => ({
      ...(model ? { model } : {}),
      messages: [{ role: 'user', content: `${BODY_SECRET} please` }],
      max_tokens: 5,
    });
    // An unknown model named by the client: warned once, with the name escaped (a model of this attempt's).
    // (The free plan has a cost limit, so the guard prices the named model before the call.)
    const run = Date.now(); // a retried attempt starts on fresh users
    logger.lines.length = 0;
    expect((await post(`plan=free;log-model-${run}`, body(`gpt-${run}-${HOSTILE}`))).status).toBe(200);
    // A plan name (from the host's plan function) that is not in the catalog: warned, escaped.
    expect((await post(`hostile-plan-${run}`, body())).status).toBe(200);
    // Alerts name the user: 4 of 5 calls of the free plan cross 80 %.
    for (let i = 0; i < 4; i++) expect((await post(`plan=free;${run}${HOSTILE}`, body())).status).toBe(200);
    // An alert is published once the usage that crossed its threshold has committed: with durable intent
    // (the default) that may be just after the response.
    for (const until = Date.now() + 2_000; Date.now() < until;) {
      if (logger.lines.some((l) => l.includes('usage alert'))) break;
      await new Promise((r) => setTimeout(r, 10));
    }

    const mine = logger.lines.filter((l) => /has no price|not in the catalog|usage alert/.test(l));
    expect(mine.filter((l) => l.includes('has no price'))).toHaveLength(1);
    expect(mine.filter((l) => l.includes('not in the catalog'))).toHaveLength(1);
    expect(mine.filter((l) => l.includes('usage alert'))).toHaveLength(1);
    for (const line of mine) {
      // Escaped as JSON would (and cut: user ids after 64 characters, models after 80).
      expect(line).toContain('x\\n[Nest] 1  - LOG forged line\\r\\u001b[31mred\\u001b[0');
    }
    for (const line of logger.lines) {
      for (const c of ['\n', '\r', '\u001b', '\u0007']) expect(line).not.toContain(c);
      expect(line).not.toContain(BODY_SECRET);
    }
  });
});
