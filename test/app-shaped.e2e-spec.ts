import { Body, Controller, HttpCode, Post, StreamableFile } from '@nestjs/common';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import request from 'supertest';
import { Metered, UsageService } from '@app/usage-monitoring';
import { estimateTokens } from '@app/usage-monitoring/metering/token-estimator';
import { CapturingLogger } from './utils/capturing-logger';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { fakeFigures, startFakeProviders, type FakeProviders } from './utils/fake-providers';
import { bearer, MeteringBound } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore } from './utils/test-store';

const NOV_20 = Date.UTC(2026, 10, 20, 8, 0, 0);
const PRICE = { inputPerMTok: 1000, outputPerMTok: 2000 };
const MESSAGE = 'Tell me about the weather on the coast this weekend';
const COLUMNS = 'model, endpoint, input_tokens, output_tokens, cost_micros, estimated, outcome';

interface ChatReply {
  reply: string;
  tokens: { in: number; out: number };
}

class Upstream {
  fake!: FakeProviders;
}

/** An app's own chat API: `{ message }` in, `{ reply }` out, the provider called inside. */
@Controller('app')
@MeteringBound()
class AppShapedController {
  constructor(private readonly upstream: Upstream) {}

  @Post('no-usage')
  @HttpCode(200)
  @Metered({ provider: 'openai', model: 'gpt-4o-mini' })
  noUsage(@Body() body: { message: string }) {
    return { reply: `You said: ${body.message}` };
  }

  @Post('with-usage')
  @HttpCode(200)
  @Metered({
    provider: 'openai',
    model: 'gpt-4o-mini',
    usage: (result: ChatReply) => ({ inputTokens: result.tokens.in, outputTokens: result.tokens.out }),
  })
  withUsage(): ChatReply {
    return { reply: 'Sunny.', tokens: { in: 40, out: 9 } };
  }

  @Post('estimated')
  @HttpCode(200)
  @Metered({
    provider: 'openai',
    model: 'gpt-4o-mini',
    estimate: (_req, body: { message: string }) => ({ text: body.message, maxOutputTokens: 50 }),
  })
  estimated() {
    return { reply: 'no usage here' };
  }

  @Post('reader-throws')
  @HttpCode(200)
  @Metered({
    provider: 'openai',
    model: 'gpt-4o-mini',
    usage: (result: { tokens?: { in: number } }) => ({ inputTokens: result.tokens!.in }),
  })
  readerThrows() {
    return { reply: 'a shape the reader did not expect' };
  }

  @Post('negative-estimate')
  @HttpCode(200)
  @Metered({ provider: 'openai', estimate: () => ({ inputTokens: -1_000_000 }) })
  negativeEstimate() {
    return { reply: 'never' };
  }

  /** Returns the SDK's stream as it is: sent as server-sent events, metered from its chunks. */
  @Post('sdk-stream')
  @Metered({ provider: 'openai' })
  sdkStream(@Body() body: { message: string }) {
    return this.upstream.fake.openai().chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: body.message }],
      stream: true,
      stream_options: { include_usage: true },
    });
  }

  /** Pipes the SDK stream's NDJSON (`toReadableStream()`) back. */
  @Post('ndjson')
  @Metered({ provider: 'openai' })
  async ndjson(@Body() body: { message: string }) {
    const stream = await this.upstream.fake.openai().chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: body.message }],
      stream: true,
      stream_options: { include_usage: true },
    });
    return new StreamableFile(Readable.fromWeb(stream.toReadableStream() as WebReadableStream), {
      type: 'application/x-ndjson',
    });
  }
}

describeStore('app-shaped metered routes', () => {
  let t: TestApp;
  let fake: FakeProviders;
  const upstream = new Upstream();
  const logger = new CapturingLogger();

  beforeAll(async () => {
    fake = await startFakeProviders();
    upstream.fake = fake;
    t = await createTestApp({
      usage: { clock: () => NOV_20, prices: { 'gpt-4o-mini': PRICE } },
      controllers: [AppShapedController],
      providers: [{ provide: Upstream, useValue: upstream }],
      logger,
    });
  });
  afterAll(async () => {
    await t.close();
    await fake.close();
  });

  const post = (user: string, path: string, body: object = { message: MESSAGE }) =>
    request(t.url).post(`/app/${path}`).set('authorization', bearer(user)).send(body);
  const rows = (user: string) =>
    queryUserDb(t, user, `SELECT ${COLUMNS} FROM usage_events ORDER BY occurred_at`);
  const input = estimateTokens(MESSAGE, 'gpt-4o-mini');

  it('charges a result without usage its estimate (never 0), flagged, with one warning per route', async () => {
    expect(input).toBeGreaterThan(5);
    for (let i = 0; i < 2; i++) {
      const res = await post('plan=big;no-usage', 'no-usage');
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ reply: `You said: ${MESSAGE}` });
    }
    // The estimate: the body's text, and the default bound on output tokens (1024).
    const estimate = { input_tokens: input, output_tokens: 1024, cost_micros: input * 1000 + 1024 * 2000 };
    expect(await rows('plan=big;no-usage')).toEqual([
      { model: 'gpt-4o-mini', endpoint: '/app/no-usage', ...estimate, estimated: 1, outcome: 'ok' },
      { model: 'gpt-4o-mini', endpoint: '/app/no-usage', ...estimate, estimated: 1, outcome: 'ok' },
    ]);
    const warnings = logger.lines.filter((l) => l.includes('AppShapedController.noUsage'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(
      "@Metered({ provider: 'openai', usage: (result) => ({ inputTokens, outputTokens }) })",
    );
  });

  it('reads the usage out of the result with @Metered({ usage })', async () => {
    const res = await post('plan=big;with-usage', 'with-usage');
    expect(res.body).toEqual({ reply: 'Sunny.', tokens: { in: 40, out: 9 } });
    expect(await rows('plan=big;with-usage')).toEqual([
      {
        model: 'gpt-4o-mini',
        endpoint: '/app/with-usage',
        input_tokens: 40,
        output_tokens: 9,
        cost_micros: 40 * 1000 + 9 * 2000,
        estimated: 0,
        outcome: 'ok',
      },
    ]);
    expect(logger.lines.filter((l) => l.includes('AppShapedController.withUsage'))).toEqual([]);
  });

  it('reserves what @Metered({ estimate }) says of an app-shaped request', async () => {
    await post('plan=big;estimated', 'estimated');
    expect(await rows('plan=big;estimated')).toEqual([
      expect.objectContaining({ input_tokens: input, output_tokens: 50, estimated: 1 }),
    ]);
    // tokens plan: 10,000 tokens a month; an estimate above what remains is refused before the handler.
    const refused = await post('plan=tokens;estimated', 'estimated', { message: 'word '.repeat(12_000) });
    expect(refused.status).toBe(429);
    expect(refused.body.code).toBe('USAGE_LIMIT_TOKENS');
  });

  it('charges the estimate when the usage reader throws on an unexpected result', async () => {
    const res = await post('plan=big;reader-throws', 'reader-throws');
    expect(res.status).toBe(200);
    expect(await rows('plan=big;reader-throws')).toEqual([
      expect.objectContaining({ input_tokens: input, output_tokens: 1024, estimated: 1, outcome: 'ok' }),
    ]);
  });

  it('refuses a route whose estimate states a negative figure, reserving nothing', async () => {
    const res = await post('plan=tokens;negative-estimate', 'negative-estimate');
    expect(res.status).toBe(500);
    expect(logger.lines.join('\n')).toContain(
      '@Metered estimate of AppShapedController.negativeEstimate: inputTokens must be a non-negative integer, got -1000000',
    );
    const [tokens] = (await t.app.get(UsageService).getUsage('plan=tokens;negative-estimate')).limits;
    expect(tokens).toMatchObject({ metric: 'tokens', used: 0, reserved: 0 });
  });

  it('sends an SDK stream a handler returns as server-sent events, charged exactly', async () => {
    const f = fakeFigures(MESSAGE);
    const res = await post('plan=big;sdk-stream', 'sdk-stream')
      .buffer(true)
      .parse((r, done) => {
        let text = '';
        r.on('data', (c: Buffer) => (text += c.toString()));
        r.on('end', () => done(null, text));
      });
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const chunks = (res.body as string)
      .split('\n\n')
      .filter((e) => e.startsWith('data: '))
      .map((e) => JSON.parse(e.slice(6)) as { choices: { delta?: { content?: string } }[]; usage?: unknown });
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).toBe(f.text);
    expect(chunks.at(-1)!.usage).toMatchObject({
      prompt_tokens: f.inputTokens,
      completion_tokens: f.outputTokens,
    });
    await waitForRow('plan=big;sdk-stream');
    expect(await rows('plan=big;sdk-stream')).toEqual([
      {
        model: 'gpt-4o-mini',
        endpoint: '/app/sdk-stream',
        input_tokens: f.inputTokens,
        output_tokens: f.outputTokens,
        cost_micros: f.inputTokens * 1000 + f.outputTokens * 2000,
        estimated: 0,
        outcome: 'ok',
      },
    ]);
  });

  it('reads the NDJSON of an SDK stream’s toReadableStream() piped back', async () => {
    const f = fakeFigures(MESSAGE);
    const res = await post('plan=big;ndjson', 'ndjson')
      .buffer(true)
      .parse((r, done) => {
        let text = '';
        r.on('data', (c: Buffer) => (text += c.toString()));
        r.on('end', () => done(null, text));
      });
    expect((res.body as string).trim().split('\n')).toHaveLength(f.chunks.length + 2);
    await waitForRow('plan=big;ndjson');
    expect(await rows('plan=big;ndjson')).toEqual([
      expect.objectContaining({
        input_tokens: f.inputTokens,
        output_tokens: f.outputTokens,
        estimated: 0,
        outcome: 'ok',
      }),
    ]);
  });

  async function waitForRow(user: string): Promise<void> {
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const [c] = await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM usage_events').catch(
        () => [{ n: 0 }],
      );
      if (c.n > 0) return;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
});

describeStore('app-shaped metered routes on Fastify', () => {
  let t: TestApp;
  let fake: FakeProviders;
  const upstream = new Upstream();

  beforeAll(async () => {
    fake = await startFakeProviders();
    upstream.fake = fake;
    t = await createTestApp({
      platform: 'fastify',
      usage: { clock: () => NOV_20, prices: { 'gpt-4o-mini': PRICE } },
      controllers: [AppShapedController],
      providers: [{ provide: Upstream, useValue: upstream }],
    });
  });
  afterAll(async () => {
    await t.close();
    await fake.close();
  });

  it('sends an SDK stream a handler returns as server-sent events, charged exactly', async () => {
    const f = fakeFigures(MESSAGE);
    const user = 'plan=big;fastify-stream';
    const res = await fetch(`${t.url}/app/sdk-stream`, {
      method: 'POST',
      headers: { authorization: bearer(user), 'content-type': 'application/json' },
      body: JSON.stringify({ message: MESSAGE }),
    });
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events = (await res.text()).split('\n\n').filter((e) => e.startsWith('data: '));
    expect(events).toHaveLength(f.chunks.length + 2);
    const deadline = Date.now() + 5000;
    let rows = await queryUserDb(t, user, `SELECT ${COLUMNS} FROM usage_events`).catch(() => []);
    while (rows.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
      rows = await queryUserDb(t, user, `SELECT ${COLUMNS} FROM usage_events`).catch(() => []);
    }
    expect(rows).toEqual([
      expect.objectContaining({
        input_tokens: f.inputTokens,
        output_tokens: f.outputTokens,
        estimated: 0,
        outcome: 'ok',
      }),
    ]);
  });
});
