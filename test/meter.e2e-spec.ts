import { Controller, HttpCode, Post, Req } from '@nestjs/common';
import request from 'supertest';
import {
  UsageLimitExceededException,
  UsageMeter,
  UsageService,
  type UsageRequest,
} from '@app/usage-monitoring';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { fakeFigures, startFakeProviders, type FakeProviders } from './utils/fake-providers';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore } from './utils/test-store';

const NOV_20 = Date.UTC(2026, 10, 20, 8, 0, 0);
const COLUMNS =
  'provider, model, endpoint, method, status_code, input_tokens, output_tokens, cost_micros, estimated, outcome';
/** Round prices, so that a ledger row's cost is exact: 1,000 µ$ per input token, 2,000 per output token. */
const PRICE = { inputPerMTok: 1000, outputPerMTok: 2000 };
const costOf = (input: number, output: number) => input * 1000 + output * 2000;
const PROMPT = 'Write a haiku about metering';
const chatParams = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: PROMPT }] };

class FakeHolder {
  providers!: FakeProviders;
}

/** A handler that calls the provider through the meter: the fast path, no guard or interceptor. */
@Controller('meter-route')
class MeterRouteController {
  constructor(
    private readonly meter: UsageMeter,
    private readonly fake: FakeHolder,
  ) {}

  @Post()
  @HttpCode(200)
  async chat(@Req() req: UsageRequest) {
    const userId = (req.user as { id: string }).id;
    const completion = await this.meter.run({ userId, provider: 'openai', request: chatParams }, () =>
      this.fake.providers.openai().chat.completions.create(chatParams),
    );
    return { reply: completion.choices[0].message.content };
  }
}

describeStore('UsageMeter through the official SDKs', () => {
  let t: TestApp;
  let fake: FakeProviders;
  let meter: UsageMeter;
  const holder = new FakeHolder();

  beforeAll(async () => {
    fake = await startFakeProviders();
    holder.providers = fake;
    t = await createTestApp({
      usage: {
        clock: () => NOV_20,
        prices: { 'gpt-4o-mini': PRICE, 'claude-house-1': PRICE, 'gemini-house-1': PRICE },
        // 300 reservations issued in one tick: exactness is the point here, not the 250 ms deadline (a
        // slow PostgreSQL answers 503s then, as the failure specs prove).
        enforcementTimeoutMs: 5_000,
      },
      controllers: [MeterRouteController],
      providers: [{ provide: FakeHolder, useValue: holder }],
    });
    meter = t.app.get(UsageMeter);
  });
  afterAll(async () => {
    await t.close();
    await fake.close();
  });

  const rows = (user: string) =>
    queryUserDb(t, user, `SELECT ${COLUMNS} FROM usage_events ORDER BY occurred_at, request_id`);
  const row = (provider: string, model: string, input: number, output: number, extra: object = {}) => ({
    provider,
    model,
    endpoint: `meter:${provider}`,
    method: 'CALL',
    status_code: 200,
    input_tokens: input,
    output_tokens: output,
    cost_micros: costOf(input, output),
    estimated: 0,
    outcome: 'ok',
    ...extra,
  });

  it('charges an OpenAI chat completion, a response and their streams exactly', async () => {
    const user = 'plan=big;openai-sdk';
    const openai = fake.openai();
    const f = fakeFigures(PROMPT);

    const completion = await meter.run({ userId: user, provider: 'openai', request: chatParams }, () =>
      openai.chat.completions.create(chatParams),
    );
    expect(completion.choices[0].message.content).toBe(f.text);

    const stream = await meter.run({ userId: user, provider: 'openai', request: chatParams }, () =>
      openai.chat.completions.create({
        ...chatParams,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    const texts: string[] = [];
    let reported: unknown;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) texts.push(chunk.choices[0].delta.content);
      if (chunk.usage) reported = chunk.usage;
    }
    // The chunks pass through unchanged.
    expect(texts).toEqual(f.chunks);
    expect(reported).toEqual({
      prompt_tokens: f.inputTokens,
      completion_tokens: f.outputTokens,
      total_tokens: f.inputTokens + f.outputTokens,
    });

    const responseParams = { model: 'gpt-4o-mini', input: PROMPT };
    const response = await meter.run({ userId: user, provider: 'openai', request: responseParams }, () =>
      openai.responses.create(responseParams),
    );
    expect(response.output_text).toBe(f.text);
    const events = await meter.run({ userId: user, provider: 'openai', request: responseParams }, () =>
      openai.responses.create({ ...responseParams, stream: true }),
    );
    let deltas = '';
    for await (const e of events) if (e.type === 'response.output_text.delta') deltas += e.delta;
    expect(deltas).toBe(f.text);

    await waitForRows(user, 4);
    expect(await rows(user)).toEqual(
      Array.from({ length: 4 }, () => row('openai', 'gpt-4o-mini', f.inputTokens, f.outputTokens)),
    );
  });

  it('meters an SDK stream read through toReadableStream() and tee()', async () => {
    const user = 'plan=big;openai-readable';
    const f = fakeFigures(PROMPT);
    const stream = await meter.run({ userId: user, provider: 'openai', request: chatParams }, () =>
      fake
        .openai()
        .chat.completions.create({ ...chatParams, stream: true, stream_options: { include_usage: true } }),
    );
    const reader = stream.toReadableStream().getReader();
    const lines: string[] = [];
    const decoder = new TextDecoder();
    for (let r = await reader.read(); !r.done; r = await reader.read()) lines.push(decoder.decode(r.value));
    expect(lines.length).toBe(f.chunks.length + 2); // the chunks, the stop chunk, the usage chunk

    const teed = await meter.run({ userId: user, provider: 'openai', request: chatParams }, () =>
      fake
        .openai()
        .chat.completions.create({ ...chatParams, stream: true, stream_options: { include_usage: true } }),
    );
    const [left] = teed.tee();
    let n = 0;
    for await (const chunk of left) if (chunk) n++;
    expect(n).toBe(f.chunks.length + 2);

    await waitForRows(user, 2);
    expect(await rows(user)).toEqual([
      row('openai', 'gpt-4o-mini', f.inputTokens, f.outputTokens),
      row('openai', 'gpt-4o-mini', f.inputTokens, f.outputTokens),
    ]);
  });

  it('charges an Anthropic message, its event stream and its MessageStream exactly', async () => {
    const user = 'plan=big;anthropic-sdk';
    const anthropic = fake.anthropic();
    const params = {
      model: 'claude-house-1',
      max_tokens: 200,
      messages: [{ role: 'user' as const, content: PROMPT }],
    };
    const f = fakeFigures(PROMPT, 200);

    const message = await meter.run({ userId: user, provider: 'anthropic', request: params }, () =>
      anthropic.messages.create(params),
    );
    expect(message.usage).toMatchObject({ input_tokens: f.inputTokens, output_tokens: f.outputTokens });

    const events = await meter.run({ userId: user, provider: 'anthropic', request: params }, () =>
      anthropic.messages.create({ ...params, stream: true }),
    );
    let text = '';
    for await (const e of events)
      if (e.type === 'content_block_delta' && e.delta.type === 'text_delta') text += e.delta.text;
    expect(text).toBe(f.text);

    const runner = await meter.run({ userId: user, provider: 'anthropic', request: params }, () =>
      anthropic.messages.stream(params),
    );
    const final = await runner.finalMessage();
    expect(final.usage.output_tokens).toBe(f.outputTokens);

    await waitForRows(user, 3);
    expect(await rows(user)).toEqual(
      Array.from({ length: 3 }, () => row('anthropic', 'claude-house-1', f.inputTokens, f.outputTokens)),
    );
  });

  it('charges a Gemini response and its stream exactly', async () => {
    const user = 'plan=big;gemini-sdk';
    const genai = fake.genai();
    const params = { model: 'gemini-house-1', contents: PROMPT };
    const f = fakeFigures(PROMPT);
    const request = { contents: [{ parts: [{ text: PROMPT }] }] };

    const response = await meter.run(
      { userId: user, provider: 'gemini', model: 'gemini-house-1', request },
      () => genai.models.generateContent(params),
    );
    expect(response.text).toBe(f.text);

    const stream = await meter.run(
      { userId: user, provider: 'gemini', model: 'gemini-house-1', request },
      () => genai.models.generateContentStream(params),
    );
    let text = '';
    for await (const chunk of stream) text += chunk.text ?? '';
    expect(text).toBe(f.text);

    await waitForRows(user, 2);
    expect(await rows(user)).toEqual([
      row('gemini', 'gemini-house-1', f.inputTokens, f.outputTokens),
      row('gemini', 'gemini-house-1', f.inputTokens, f.outputTokens),
    ]);
  });

  it('charges a consumer that breaks out after 3 chunks as partial, never 0', async () => {
    const user = 'plan=big;breaks-early';
    const f = fakeFigures(PROMPT);
    fake.chunkDelayMs = 20;
    try {
      const stream = await meter.run({ userId: user, provider: 'openai', request: chatParams }, () =>
        fake
          .openai()
          .chat.completions.create({ ...chatParams, stream: true, stream_options: { include_usage: true } }),
      );
      let n = 0;
      for await (const chunk of stream) if (chunk && ++n === 3) break;
      expect(stream.controller.signal.aborted).toBe(true);
    } finally {
      fake.chunkDelayMs = 2;
    }
    await waitForRows(user, 1);
    const [r] = await rows(user);
    expect(r).toMatchObject({ outcome: 'partial', estimated: 1, input_tokens: f.inputTokens });
    expect(r.output_tokens as number).toBeGreaterThan(0);
    expect(r.output_tokens as number).toBeLessThan(f.outputTokens);
  });

  it('records a call that throws as failed with its status, and rethrows it', async () => {
    const user = 'plan=big;upstream-fails';
    fake.failNext(500);
    const error = await meter
      .run({ userId: user, provider: 'openai', request: chatParams }, () =>
        fake.openai().chat.completions.create(chatParams),
      )
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ status: 500 });
    expect(await rows(user)).toEqual([
      row('openai', 'gpt-4o-mini', 0, 0, { status_code: 500, outcome: 'error' }),
    ]);
  });

  it('runs exactly 100 of 300 parallel calls for a user with 100 left', async () => {
    const user = 'plan=hundred;racer';
    const before = fake.requests.length;
    const results = await Promise.allSettled(
      Array.from({ length: 300 }, () =>
        meter.run({ userId: user, provider: 'openai', request: chatParams }, () =>
          fake.openai().chat.completions.create(chatParams),
        ),
      ),
    );
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    const refused = results.filter(
      (r) => r.status === 'rejected' && r.reason instanceof UsageLimitExceededException,
    ).length;
    expect([ok, refused, results.length - ok - refused]).toEqual([100, 200, 0]);
    expect(fake.requests.length - before).toBe(100);
    await waitForRows(user, 100);
    const [counter] = await queryUserDb<{ used: number }>(
      t,
      user,
      "SELECT used FROM usage_counters WHERE metric = 'calls' AND scope = 'openai'",
    );
    const [ledger] = await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM usage_events');
    expect([counter.used, ledger.n]).toEqual([100, 100]);
  });

  it('answers the 429 body and headers when the refusal escapes a handler', async () => {
    const user = 'plan=zero;handler';
    const res = await request(t.url).post('/meter-route').set('authorization', bearer(user)).send({});
    expect(res.status).toBe(429);
    expect(res.body).toMatchObject({ code: 'USAGE_LIMIT_CALLS', provider: 'openai' });
    expect(res.headers['retry-after']).toBeDefined();
    expect(res.headers['x-ratelimit-limit']).toBe('0');
    expect(res.headers['x-ratelimit-remaining']).toBe('0');
    const ok = await request(t.url)
      .post('/meter-route')
      .set('authorization', bearer('plan=big;handler'))
      .send({});
    expect(ok.status).toBe(200);
    expect(ok.body).toEqual({ reply: fakeFigures(PROMPT).text });
  });

  it('counts a call in the health stats by the time its response arrives', async () => {
    // meter.run with durable intent returns before the ledger row commits: the call is counted already.
    const recent = async () =>
      (await request(t.url).get('/health/usage')).body.usage.recent_requests as number;
    const before = await recent();
    for (let i = 1; i <= 20; i++) {
      const res = await request(t.url)
        .post('/meter-route')
        .set('authorization', bearer('plan=big;counted'))
        .send({});
      expect(res.status).toBe(200);
      expect(await recent()).toBe(before + i);
    }
  });

  it('reserves several operations up front and settles each as it completes', async () => {
    const user = 'plan=free;preflight';
    // free: 5 AI text calls a month, 3 tavily searches.
    const research = await meter.reserve({
      userId: user,
      provider: 'openai',
      estimate: { text: PROMPT, maxOutputTokens: 100 },
    });
    const search = await meter.reserve({ userId: user, provider: 'tavily' });
    const spare = await meter.reserve({
      userId: user,
      provider: 'openai',
      estimate: { maxOutputTokens: 10 },
    });
    const usage = t.app.get(UsageService);
    const reservedCalls = async () =>
      (await usage.getUsage(user)).limits.find((l) => l.scope !== 'tavily' && l.metric === 'calls')!;
    expect((await reservedCalls()).reserved).toBe(2);

    await research.settle({ model: 'gpt-4o-mini', inputTokens: 30, outputTokens: 12 });
    await search.settle({ searches: 1 });
    await spare.release();
    await spare.release(); // a no-op once released
    await expect(research.settle({ inputTokens: 1 })).rejects.toThrow(/already settled or released/);
    expect(await reservedCalls()).toMatchObject({ used: 1, reserved: 0 });
    expect(
      await queryUserDb(
        t,
        user,
        'SELECT provider, input_tokens, output_tokens, searches, cost_micros, estimated FROM usage_events ORDER BY provider',
      ),
    ).toEqual([
      {
        provider: 'openai',
        input_tokens: 30,
        output_tokens: 12,
        searches: 0,
        cost_micros: costOf(30, 12),
        estimated: 0,
      },
      {
        provider: 'tavily',
        input_tokens: 0,
        output_tokens: 0,
        searches: 1,
        cost_micros: expect.any(Number),
        estimated: 0,
      },
    ]);
  });

  it('releases a charge left unsettled after the reservation TTL, counted in the health stats', async () => {
    const user = 'plan=free;forgotten';
    const usage = t.app.get(UsageService);
    const before = usage.enforcementStats().releasedByTtl;
    await meter.reserve({ userId: user, provider: 'openai', estimate: { maxOutputTokens: 10 } });
    const calls = async () =>
      (await usage.getUsage(user)).limits.find((l) => l.scope !== 'tavily' && l.metric === 'calls')!;
    expect((await calls()).reserved).toBe(1);
    // The store's sweep, as its timer runs it, at a time past the TTL (15 minutes by default).
    await (t.probe.store as unknown as { sweep(now: number): unknown }).sweep(NOV_20 + 15 * 60_000 + 1);
    expect((await calls()).reserved).toBe(0);
    expect(usage.enforcementStats().releasedByTtl).toBe(before + 1);
  });

  it('refuses a spec without a user, and figures that cannot be right', async () => {
    await expect(meter.run({ userId: '', provider: 'openai' }, () => 1)).rejects.toThrow(
      /spec.userId must be a non-empty string/,
    );
    await expect(
      meter.run({ userId: 'plan=big;x', provider: 'openai', estimate: { maxOutputTokens: -5 } }, () => 1),
    ).rejects.toThrow(/maxOutputTokens must be a non-negative integer/);
    await expect(
      meter.run(
        {
          userId: 'plan=big;bad-figures',
          provider: 'openai',
          estimate: { text: 'four words of text', maxOutputTokens: 7 },
        },
        () => ({ inputTokens: -1 }),
      ),
    ).rejects.toThrow(/inputTokens must be a non-negative integer/);
    // Charged at the reservation's estimate instead, flagged.
    expect(
      await queryUserDb(t, 'plan=big;bad-figures', 'SELECT output_tokens, estimated FROM usage_events'),
    ).toEqual([{ output_tokens: 7, estimated: 1 }]);
  });

  async function waitForRows(user: string, n: number): Promise<void> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const [c] = await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM usage_events').catch(
        () => [{ n: 0 }],
      );
      if (c.n >= n || Date.now() > deadline) return;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
});
