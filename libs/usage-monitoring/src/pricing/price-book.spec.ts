import { UsageExtractor } from '../metering/usage-extractor';
import { DEFAULT_MODELS, DEFAULT_PRICES } from './default-prices';
import { PriceBook } from './price-book';

/** Real-shaped provider responses; tokens and cost worked out by hand in the comments. */
const FIXTURES: [string, string, unknown, unknown, object, number][] = [
  [
    // 500 uncached × $2.50/M + 1,500 cached × $1.25/M + 300 out × $10/M = 1,250 + 1,875 + 3,000 µ$
    'OpenAI chat completion with cached prompt tokens',
    'openai',
    { model: 'gpt-4o', messages: [] },
    {
      model: 'gpt-4o-2024-08-06',
      usage: {
        prompt_tokens: 2000,
        completion_tokens: 300,
        total_tokens: 2300,
        prompt_tokens_details: { cached_tokens: 1500, audio_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: 0 },
      },
    },
    { inputTokens: 2000, cachedInputTokens: 1500, outputTokens: 300, reasoningTokens: 0, estimated: false },
    6125,
  ],
  [
    // 1,000 in × $0.15/M + 800 out (600 of them reasoning, at the output rate) × $0.60/M = 150 + 480 µ$
    'OpenAI responses API with reasoning tokens',
    'openai',
    { model: 'gpt-4o-mini', input: 'hi' },
    {
      model: 'gpt-4o-mini-2024-07-18',
      output_text: 'hello',
      usage: {
        input_tokens: 1000,
        input_tokens_details: { cached_tokens: 0 },
        output_tokens: 800,
        output_tokens_details: { reasoning_tokens: 600 },
        total_tokens: 1800,
      },
    },
    { inputTokens: 1000, cachedInputTokens: 0, outputTokens: 800, reasoningTokens: 600, estimated: false },
    630,
  ],
  [
    // 100 × $3/M + 4,000 read × $0.30/M + 1,000 written × $3.75/M + 200 out × $15/M = 300 + 1,200 + 3,750 + 3,000 µ$
    'Anthropic message with cache creation and cache read',
    'anthropic',
    { model: 'claude-3-5-sonnet-20241022', max_tokens: 1024, messages: [] },
    {
      id: 'msg_01',
      type: 'message',
      model: 'claude-3-5-sonnet-20241022',
      content: [{ type: 'text', text: 'Hi' }],
      usage: {
        input_tokens: 100,
        cache_creation_input_tokens: 1000,
        cache_read_input_tokens: 4000,
        output_tokens: 200,
      },
    },
    {
      inputTokens: 5100,
      cachedInputTokens: 4000,
      cacheWriteTokens: 1000,
      outputTokens: 200,
      estimated: false,
    },
    8250,
  ],
  [
    // 1,200 in (1,000 cached, no cached price: input rate) × $0.30/M + (100 + 400 thoughts) × $2.50/M = 360 + 1,250 µ$
    'Gemini generateContent with cached content and thoughts',
    'gemini',
    { contents: [{ parts: [{ text: 'hi' }] }] },
    {
      candidates: [{ content: { parts: [{ text: 'hello' }] } }],
      usageMetadata: {
        promptTokenCount: 1200,
        cachedContentTokenCount: 1000,
        candidatesTokenCount: 100,
        thoughtsTokenCount: 400,
        totalTokenCount: 1700,
      },
      modelVersion: 'gemini-2.5-flash',
    },
    { inputTokens: 1200, cachedInputTokens: 1000, outputTokens: 500, reasoningTokens: 400, estimated: false },
    1610,
  ],
];

describe('provider usage → exact tokens and cost', () => {
  const extractor = new UsageExtractor(1024);
  const book = new PriceBook(DEFAULT_PRICES, {}, DEFAULT_MODELS);

  it.each(FIXTURES)('%s', (_name, provider, request, response, tokens, cost) => {
    const usage = extractor.measure(provider, request, response);
    expect(usage).toMatchObject(tokens);
    expect(book.price(provider, usage.model, usage).costMicros).toBe(cost);
  });
});

describe('unknown models', () => {
  const q = { inputTokens: 1_000_000, outputTokens: 0, searches: 0, images: 0, pages: 0 };

  it('default-price: priced as the provider’s default model', () => {
    const book = new PriceBook(DEFAULT_PRICES, {}, DEFAULT_MODELS, 'default-price');
    expect(book.price('openai', 'gpt-9-turbo', q)).toEqual({ costMicros: 150_000, pricedAs: 'gpt-4o-mini' });
  });

  it('allow-unpriced: tokens at no token cost', () => {
    const book = new PriceBook(DEFAULT_PRICES, {}, DEFAULT_MODELS, 'allow-unpriced');
    expect(book.price('openai', 'gpt-9-turbo', q).costMicros).toBe(0);
  });

  it('deny: the model is reported unknown (the guard refuses it); dated and prefixed ids are known', () => {
    const book = new PriceBook(DEFAULT_PRICES, {}, DEFAULT_MODELS, 'deny');
    expect(book.isKnown('gpt-9-turbo')).toBe(false);
    expect(book.isKnown('gpt-4o-mini-2024-07-18')).toBe(true);
    expect(book.isKnown('models/gemini-2.5-flash')).toBe(true);
    expect(book.isKnown(undefined)).toBe(true);
  });

  it('a mistyped override or a default model without a price fails at construction, naming it', () => {
    expect(() => new PriceBook(DEFAULT_PRICES, { 'gpt-4o': { outputPerMtok: 1 } as never })).toThrow(
      'prices.gpt-4o.outputPerMtok is not a price field',
    );
    expect(() => new PriceBook(DEFAULT_PRICES, { x: { cachedInputPerMTok: -2 } })).toThrow(
      'prices.x.cachedInputPerMTok',
    );
    expect(() => new PriceBook(DEFAULT_PRICES, {}, { openai: 'gpt-nope' })).toThrow(
      'defaultModels.openai names "gpt-nope", which has no price',
    );
  });
});
