import { PriceBook } from '../pricing/price-book';
import { StreamUsage } from './stream-usage';
import { UsageExtractor } from './usage-extractor';

const extractor = new UsageExtractor(1024);
const book = new PriceBook();

function measure(provider: string, request: unknown, events: unknown[]) {
  const stream = new StreamUsage();
  for (const e of events) stream.push(e);
  const usage = extractor.measureStream(provider, request, stream);
  return { usage, cost: book.price(provider, usage.model, usage).costMicros };
}

/** Real-shaped streams (as the providers document them); tokens and cost worked out by hand. */
const STREAMS: [string, string, unknown, unknown[], object, number][] = [
  [
    // 3,000 in (1,000 of them cached) + 120 out: 2,000 × $2.50/M + 1,000 × $1.25/M + 120 × $10/M = 5,000 + 1,250 + 1,200
    'OpenAI chat completions, stream_options.include_usage, cached prompt',
    'openai',
    { model: 'gpt-4o', stream: true, stream_options: { include_usage: true } },
    [
      '{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
      '{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hi"}}]}',
      '{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
      '{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":3000,"completion_tokens":120,"total_tokens":3120,"prompt_tokens_details":{"cached_tokens":1000},"completion_tokens_details":{"reasoning_tokens":0}}}',
      '[DONE]',
    ],
    {
      inputTokens: 3000,
      cachedInputTokens: 1000,
      outputTokens: 120,
      estimated: false,
      model: 'gpt-4o-2024-08-06',
    },
    7_450,
  ],
  [
    // 200 in × $1.10/M + 900 out (700 reasoning, output rate) × $4.40/M = 220 + 3,960
    'OpenAI responses API events, reasoning model',
    'openai',
    { model: 'o3-mini', input: 'why', stream: true },
    [
      {
        type: 'response.created',
        response: { id: 'r1', model: 'o3-mini-2025-01-31', status: 'in_progress' },
      },
      { type: 'response.output_text.delta', item_id: 'm1', delta: 'Because' },
      {
        type: 'response.completed',
        response: {
          id: 'r1',
          model: 'o3-mini-2025-01-31',
          status: 'completed',
          usage: {
            input_tokens: 200,
            input_tokens_details: { cached_tokens: 0 },
            output_tokens: 900,
            output_tokens_details: { reasoning_tokens: 700 },
            total_tokens: 1100,
          },
        },
      },
    ],
    { inputTokens: 200, outputTokens: 900, reasoningTokens: 700, estimated: false },
    4_180,
  ],
  [
    // (10 + 2,000 read + 500 written) in, 50 out: 10 × $3/M + 2,000 × $0.30/M + 500 × $3.75/M + 50 × $15/M
    // = 30 + 600 + 1,875 + 750
    'Anthropic messages stream with prompt caching',
    'anthropic',
    { model: 'claude-3-5-sonnet-latest', max_tokens: 100, stream: true },
    [
      {
        type: 'message_start',
        message: {
          model: 'claude-3-5-sonnet-20241022',
          usage: {
            input_tokens: 10,
            cache_read_input_tokens: 2000,
            cache_creation_input_tokens: 500,
            output_tokens: 1,
          },
        },
      },
      { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } },
      { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 50 } },
      { type: 'message_stop' },
    ],
    { inputTokens: 2510, cachedInputTokens: 2000, cacheWriteTokens: 500, outputTokens: 50, estimated: false },
    3_255,
  ],
  [
    // last chunk's usageMetadata: 100 in × $0.30/M + (40 + 60 thoughts) × $2.50/M = 30 + 250
    'Gemini streamGenerateContent',
    'gemini',
    { contents: [{ parts: [{ text: 'hi' }] }] },
    [
      {
        candidates: [{ content: { parts: [{ text: 'Hel' }], role: 'model' } }],
        usageMetadata: { promptTokenCount: 100, totalTokenCount: 100 },
        modelVersion: 'gemini-2.5-flash',
      },
      {
        candidates: [{ content: { parts: [{ text: 'lo' }], role: 'model' }, finishReason: 'STOP' }],
        usageMetadata: {
          promptTokenCount: 100,
          candidatesTokenCount: 40,
          thoughtsTokenCount: 60,
          totalTokenCount: 200,
        },
        modelVersion: 'gemini-2.5-flash',
      },
    ],
    { inputTokens: 100, outputTokens: 100, reasoningTokens: 60, estimated: false },
    280,
  ],
  [
    // Broken off after message_start and two deltas: input is the provider's (25), output the tokens of
    // " alpha beta" (2 with o200k_base), flagged; 25 × $3/M + 2 × $15/M = 75 + 30
    'Anthropic stream broken off before message_delta',
    'anthropic',
    { max_tokens: 100 },
    [
      {
        type: 'message_start',
        message: { model: 'claude-3-5-sonnet-20241022', usage: { input_tokens: 25, output_tokens: 1 } },
      },
      { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: ' alpha' } },
      { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: ' beta' } },
    ],
    { inputTokens: 25, outputTokens: 2, estimated: true },
    105,
  ],
];

describe('streamed usage → exact tokens and cost', () => {
  it.each(STREAMS)('%s', (_name, provider, request, events, tokens, cost) => {
    const m = measure(provider, request, events);
    expect(m.usage).toMatchObject(tokens);
    expect(m.cost).toBe(cost);
  });

  it('never counts a stream as 0 when text was produced, whatever the provider reported so far', () => {
    const stream = new StreamUsage();
    stream.push({
      type: 'message_start',
      message: { model: 'claude-3-5-sonnet', usage: { input_tokens: 5, output_tokens: 1 } },
    });
    for (let i = 0; i < 300; i++) stream.push({ type: 'content_block_delta', delta: { text: ' word' } });
    const usage = extractor.measureStream('anthropic', {}, stream);
    expect(usage).toMatchObject({ inputTokens: 5, outputTokens: 300, estimated: true });
  });

  it('a long stream keeps bounded text: counted as it goes, the same total', () => {
    const stream = new StreamUsage();
    const piece = ' lorem'.repeat(1000); // 1,000 tokens, 6,000 characters
    for (let i = 0; i < 100; i++) stream.push(JSON.stringify({ choices: [{ delta: { content: piece } }] }));
    expect(stream.producedTokens()).toBe(100_000);
  });
});
