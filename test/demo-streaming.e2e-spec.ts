import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI, type GenerateContentResponse } from '@google/genai';
import OpenAI from 'openai';
import { countTokens } from 'gpt-tokenizer/cjs/encoding/o200k_base';
import { startDemo, type DemoApp } from './utils/demo-app';
import { describeSqlite } from './utils/test-store';
import { queryUserDb } from './utils/user-db';

interface Row {
  provider: string;
  model: string | null;
  endpoint: string;
  status_code: number;
  input_tokens: number;
  output_tokens: number;
  estimated: number;
  outcome: string;
}

const SQL =
  'SELECT provider, model, endpoint, status_code, input_tokens, output_tokens, estimated, outcome FROM usage_events ORDER BY occurred_at';

/** One user (and key) per scenario, so each streamed call is the only row of its user. */
const USERS = [
  'reference',
  'openai-stream',
  'openai-no-usage',
  'openai-break',
  'anthropic-create',
  'anthropic-helper',
  'gemini-stream',
] as const;
type User = (typeof USERS)[number];
const keyOf = (user: User) => `key-${user}`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Ledger polls are bounded at 5 s, Jest's default test timeout.
jest.setTimeout(15_000);

describeSqlite('demo app: streaming through the official SDKs', () => {
  let demo: DemoApp;
  let url: string;
  let dataDir: string;

  /** The user's ledger once it holds `n` rows (polled: a stream's row commits after its last byte). */
  async function ledger(user: User, n = 1): Promise<Row[]> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const rows = await queryUserDb<Row>(dataDir, user, SQL).catch(() => [] as Row[]);
      if (rows.length >= n || Date.now() > deadline) return rows;
      await sleep(25);
    }
  }

  const openai = (user: User) =>
    new OpenAI({ apiKey: keyOf(user), baseURL: `${url}/openai/v1`, maxRetries: 0 });
  const anthropic = (user: User) =>
    new Anthropic({ apiKey: keyOf(user), baseURL: `${url}/anthropic`, maxRetries: 0 });
  // No retryOptions: the SDK then makes one attempt. `fetch` given explicitly: by default the SDK hands
  // fetch an undici dispatcher found on `globalThis`, which Jest's sandboxed global does not carry.
  const gemini = (user: User) =>
    new GoogleGenAI({
      apiKey: keyOf(user),
      httpOptions: { baseUrl: `${url}/gemini`, fetch: (input, init) => fetch(input, init) },
    });

  beforeAll(async () => {
    demo = await startDemo(Object.fromEntries(USERS.map((u) => [keyOf(u), { user: u, plan: 'pro' }])));
    ({ url, dataDir } = demo);
  });

  afterAll(() => demo.close());

  it('OpenAI: one chunk per word, the stop chunk, the include_usage chunk; the exact usage in the ledger', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me about SSE' }];
    const reference = await openai('reference').chat.completions.create({ model: 'gpt-4o-mini', messages });
    const text = reference.choices[0].message.content!;
    expect(reference.usage).toEqual({ prompt_tokens: 5, completion_tokens: 31, total_tokens: 36 });

    const stream = await openai('openai-stream').chat.completions.create({
      model: 'gpt-4o-mini',
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);

    const words = text.split(' ').length; // 21
    expect(words).toBe(21);
    expect(chunks).toHaveLength(words + 2);
    const deltas = chunks.slice(0, words).map((c) => c.choices[0].delta.content);
    expect(deltas.join('')).toBe(text);
    expect(deltas.every((d) => d!.trim().split(' ').length === 1)).toBe(true);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    expect(chunks[words].choices).toEqual([{ index: 0, delta: {}, finish_reason: 'stop' }]);
    expect(chunks[words + 1].choices).toEqual([]);
    expect(chunks[words + 1].usage).toEqual(reference.usage);
    expect(new Set(chunks.map((c) => `${c.id} ${c.object} ${c.model}`))).toEqual(
      new Set([`${reference.id} chat.completion.chunk gpt-4o-mini`]),
    );

    expect(await ledger('openai-stream')).toEqual([
      {
        provider: 'openai',
        model: 'gpt-4o-mini',
        endpoint: '/openai/v1/chat/completions',
        status_code: 200,
        input_tokens: 5,
        output_tokens: 31,
        estimated: 0,
        outcome: 'ok',
      },
    ]);
  });

  it('OpenAI without include_usage: the text still streams; the row is estimated and flagged', async () => {
    const messages = [{ role: 'user' as const, content: 'Summarise the plan' }];
    const reference = await openai('reference').chat.completions.create({ model: 'gpt-4o-mini', messages });
    expect(reference.usage).toEqual({ prompt_tokens: 5, completion_tokens: 40, total_tokens: 45 });

    const stream = await openai('openai-no-usage').chat.completions.create({
      model: 'gpt-4o-mini',
      messages,
      stream: true,
    });
    let text = '';
    let last: OpenAI.Chat.Completions.ChatCompletionChunk | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      expect(chunk.usage).toBeUndefined();
      last = chunk;
    }
    expect(text).toBe(reference.choices[0].message.content);
    expect(last!.choices[0].finish_reason).toBe('stop');

    // No usage in the stream: input counted from the prompt, output from the text streamed, both with
    // gpt-4o-mini's tokenizer (o200k_base), and flagged.
    expect([countTokens('Summarise the plan'), countTokens(text)]).toEqual([5, 28]);
    expect(await ledger('openai-no-usage')).toEqual([
      {
        provider: 'openai',
        model: 'gpt-4o-mini',
        endpoint: '/openai/v1/chat/completions',
        status_code: 200,
        input_tokens: 5,
        output_tokens: 28,
        estimated: 1,
        outcome: 'ok',
      },
    ]);
  });

  it('OpenAI, a consumer that breaks out after 3 chunks: one partial row for what was produced', async () => {
    const messages = [{ role: 'user' as const, content: 'Explain metering' }];
    const stream = await openai('openai-break').chat.completions.create({
      model: 'gpt-4o-mini',
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    let seen = 0;
    let read = '';
    for await (const chunk of stream) {
      read += chunk.choices[0].delta.content;
      if (++seen === 3) break;
    }
    expect(read).toBe('details about is');

    const rows = await ledger('openai-break');
    expect(rows).toHaveLength(1);
    // No usage chunk reached: input counted from the prompt (3 tokens with o200k_base), output from the
    // text the server had sent when it saw the client leave: at least the 3 words read (3 tokens), less
    // than the whole answer (28 words, 29 tokens; 41 in the simulator's own count).
    expect(countTokens('Explain metering')).toBe(3);
    expect(rows[0]).toMatchObject({
      provider: 'openai',
      model: 'gpt-4o-mini',
      endpoint: '/openai/v1/chat/completions',
      status_code: 200,
      input_tokens: 3,
      estimated: 1,
      outcome: 'partial',
    });
    expect(rows[0].output_tokens).toBeGreaterThanOrEqual(3);
    expect(rows[0].output_tokens).toBeLessThan(29);
    // Settled once: nothing more arrives for that request.
    await sleep(300);
    expect(await ledger('openai-break')).toEqual(rows);
  });

  it('Anthropic, messages.create({ stream: true }): the event sequence, the exact usage in the ledger', async () => {
    const params = {
      model: 'claude-3.5-sonnet',
      max_tokens: 256,
      messages: [{ role: 'user' as const, content: 'Hi Claude' }],
    };
    const reference = await anthropic('reference').messages.create(params);
    expect(reference.usage).toEqual({ input_tokens: 3, output_tokens: 41 });
    const text = (reference.content[0] as Anthropic.TextBlock).text;

    const stream = await anthropic('anthropic-create').messages.create({ ...params, stream: true });
    const types: string[] = [];
    let streamed = '';
    let input: number | undefined;
    let output: number | undefined;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'message_start') input = event.message.usage.input_tokens;
      if (event.type === 'content_block_delta' && event.delta.type === 'text_delta')
        streamed += event.delta.text;
      if (event.type === 'message_delta') output = event.usage.output_tokens;
    }
    const words = text.split(' ').length; // 28
    expect(words).toBe(28);
    expect(types).toEqual([
      'message_start',
      'content_block_start',
      ...Array<string>(words).fill('content_block_delta'),
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
    expect(streamed).toBe(text);
    expect({ input, output }).toEqual({ input: 3, output: 41 });

    expect(await ledger('anthropic-create')).toEqual([
      {
        provider: 'anthropic',
        model: 'claude-3.5-sonnet',
        endpoint: '/anthropic/v1/messages',
        status_code: 200,
        input_tokens: 3,
        output_tokens: 41,
        estimated: 0,
        outcome: 'ok',
      },
    ]);
  });

  it('Anthropic, messages.stream(): text events and finalMessage() match the non-streamed message', async () => {
    const params = {
      model: 'claude-3.5-sonnet',
      max_tokens: 256,
      messages: [{ role: 'user' as const, content: 'Hi Claude' }],
    };
    const reference = await anthropic('reference').messages.create(params);

    const stream = anthropic('anthropic-helper').messages.stream(params);
    const deltas: string[] = [];
    stream.on('text', (delta) => deltas.push(delta));
    const final = await stream.finalMessage();
    expect(deltas).toHaveLength(28);
    expect(deltas.join('')).toBe((reference.content[0] as Anthropic.TextBlock).text);
    expect(final.content).toEqual(reference.content);
    expect(final.id).toBe(reference.id);
    expect(final.stop_reason).toBe('end_turn');
    expect(final.usage).toEqual({ input_tokens: 3, output_tokens: 41 });

    expect(await ledger('anthropic-helper')).toEqual([
      {
        provider: 'anthropic',
        model: 'claude-3.5-sonnet',
        endpoint: '/anthropic/v1/messages',
        status_code: 200,
        input_tokens: 3,
        output_tokens: 41,
        estimated: 0,
        outcome: 'ok',
      },
    ]);
  });

  it('Gemini, generateContentStream (…:streamGenerateContent?alt=sse): the last chunk carries the usage', async () => {
    const reference = await gemini('reference').models.generateContent({
      model: 'gemini-2.5-flash',
      contents: 'Hello Gemini',
    });
    expect(reference.usageMetadata).toEqual({
      promptTokenCount: 3,
      candidatesTokenCount: 35,
      totalTokenCount: 38,
    });

    const stream = await gemini('gemini-stream').models.generateContentStream({
      model: 'gemini-2.5-flash',
      contents: 'Hello Gemini',
    });
    const chunks: GenerateContentResponse[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const words = reference.text!.split(' ').length; // 23
    expect(words).toBe(23);
    expect(chunks).toHaveLength(words);
    expect(chunks.map((c) => c.text).join('')).toBe(reference.text);
    const last = chunks.at(-1)!;
    expect(last.candidates![0].finishReason).toBe('STOP');
    expect(last.usageMetadata).toEqual(reference.usageMetadata);
    expect(chunks.slice(0, -1).every((c) => !c.usageMetadata && !c.candidates![0].finishReason)).toBe(true);
    expect(chunks.every((c) => c.modelVersion === 'gemini-2.5-flash')).toBe(true);

    expect(await ledger('gemini-stream')).toEqual([
      {
        provider: 'gemini',
        model: 'gemini-2.5-flash',
        endpoint: '/gemini/v1/models/gemini-2.5-flash:streamGenerateContent',
        status_code: 200,
        input_tokens: 3,
        output_tokens: 35,
        estimated: 0,
        outcome: 'ok',
      },
    ]);
  });

  it('the reference (non-streamed) calls were metered exactly, one row each', async () => {
    const rows = await ledger('reference', 5);
    expect(rows.map((r) => [r.provider, r.input_tokens, r.output_tokens, r.estimated, r.outcome])).toEqual([
      ['openai', 5, 31, 0, 'ok'],
      ['openai', 5, 40, 0, 'ok'],
      ['anthropic', 3, 41, 0, 'ok'],
      ['anthropic', 3, 41, 0, 'ok'],
      ['gemini', 3, 35, 0, 'ok'],
    ]);
  });
});
