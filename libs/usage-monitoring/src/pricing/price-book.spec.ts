import { CATALOG_VERSION } from './catalog';
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
    // 200 uncached × $0.30/M + 1,000 cached × $0.03/M + (100 + 400 thoughts) × $2.50/M = 60 + 30 + 1,250 µ$
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
    1340,
  ],
];

describe('provider usage → exact tokens and cost', () => {
  const extractor = new UsageExtractor(1024);
  const book = new PriceBook({ builtin: DEFAULT_PRICES, defaultModels: DEFAULT_MODELS });

  it.each(FIXTURES)('%s', (_name, provider, request, response, tokens, cost) => {
    const usage = extractor.measure(provider, request, response);
    expect(usage).toMatchObject(tokens);
    expect(book.price(provider, usage.model, usage).costMicros).toBe(cost);
  });
});

describe('unknown models', () => {
  const q = { inputTokens: 1_000_000, outputTokens: 0, searches: 0, images: 0, pages: 0 };

  it('highest-price (the default): a new model costs what the provider’s dearest known model costs, never less', () => {
    const book = new PriceBook({ builtin: DEFAULT_PRICES, defaultModels: DEFAULT_MODELS });
    const million = { ...q, outputTokens: 1_000_000 };
    // 1M in + 1M out: o1-pro, the catalog's dearest OpenAI model, costs $150 + $600.
    expect(book.price('openai', 'o1-pro', million).costMicros).toBe(750_000_000);
    expect(book.price('openai', 'my-new-model-2027', million)).toEqual({
      costMicros: 750_000_000,
      pricedAs: 'highest:openai',
      priceVersion: `highest:openai:genai-prices@${CATALOG_VERSION}`,
    });
    // Each rate on its own: Anthropic's dearest input and output rates.
    expect(book.price('anthropic', 'claude-9', million).costMicros).toBe(90_000_000);
    // A request that names no model is priced as the provider's default model, as before.
    expect(book.price('openai', undefined, million).costMicros).toBe(750_000);
  });

  it('highest-price without the catalog: the dearest of the prices option and the default model', () => {
    const book = new PriceBook({
      catalog: false,
      builtin: DEFAULT_PRICES,
      overrides: {
        'gpt-4o-mini': { inputPerMTok: 0.15, outputPerMTok: 0.6 },
        'gpt-4o': { inputPerMTok: 2.5, outputPerMTok: 10 },
      },
      defaultModels: { openai: 'gpt-4o-mini' },
    });
    expect(book.price('openai', 'gpt-5', { ...q, outputTokens: 1_000_000 }).costMicros).toBe(12_500_000);
  });

  it('allow-unpriced: tokens at no token cost', () => {
    const book = new PriceBook({
      builtin: DEFAULT_PRICES,
      defaultModels: DEFAULT_MODELS,
      unknownModels: 'allow-unpriced',
    });
    expect(book.price('openai', 'gpt-9-turbo', q).costMicros).toBe(0);
  });

  it('deny: the model is reported unknown (the guard refuses it); dated and prefixed ids are known', () => {
    const book = new PriceBook({
      builtin: DEFAULT_PRICES,
      defaultModels: DEFAULT_MODELS,
      unknownModels: 'deny',
    });
    expect(book.isKnown('openai', 'gpt-9-turbo')).toBe(false);
    expect(book.isKnown('openai', 'gpt-4o-mini-2024-07-18')).toBe(true);
    expect(book.isKnown('gemini', 'models/gemini-2.5-flash')).toBe(true);
    expect(book.isKnown('openai', undefined)).toBe(true);
  });

  it('a mistyped override or a default model without a price fails at construction, naming it', () => {
    expect(() => new PriceBook({ overrides: { 'gpt-4o': { outputPerMtok: 1 } as never } })).toThrow(
      'prices.gpt-4o.outputPerMtok is not a price field',
    );
    expect(() => new PriceBook({ overrides: { x: { cachedInputPerMTok: -2 } } })).toThrow(
      'prices.x.cachedInputPerMTok',
    );
    expect(() => new PriceBook({ defaultModels: { openai: 'gpt-nope' } })).toThrow(
      'defaultModels.openai names "gpt-nope", which has no price',
    );
  });
});

describe('the maintained catalog (@pydantic/genai-prices) as default prices', () => {
  const book = new PriceBook({ builtin: DEFAULT_PRICES, defaultModels: DEFAULT_MODELS });
  const q = (inputTokens: number, outputTokens: number) => ({
    inputTokens,
    outputTokens,
    searches: 0,
    images: 0,
    pages: 0,
  });
  const catalog = `genai-prices@${CATALOG_VERSION}`;

  it.each([
    // [provider, model as the API names it, input, output, µ$ worked out by hand, catalog id]
    // 1,000 × $2.50/M + 1,000 × $10/M
    ['openai', 'gpt-4o', 1000, 1000, 12_500, 'gpt-4o'],
    // the May 2024 snapshot keeps its own, higher price: 1,000 × $5/M + 1,000 × $15/M
    ['openai', 'gpt-4o-2024-05-13', 1000, 1000, 20_000, 'gpt-4o-2024-05-13'],
    // 1,000,000 × $0.30/M + 1,000,000 × $2.50/M; the provider is "google" in the catalog
    ['gemini', 'models/gemini-2.5-flash', 1_000_000, 1_000_000, 2_800_000, 'gemini-2.5-flash'],
    // dated Anthropic id: 2,000 × $3/M + 500 × $15/M
    ['anthropic', 'claude-3-5-sonnet-20241022', 2000, 500, 13_500, 'claude-3-5-sonnet'],
    // long context, base tier: 100,000 × $3/M + 1,000 × $15/M
    ['anthropic', 'claude-sonnet-4-5', 100_000, 1000, 315_000, 'claude-sonnet-4-5'],
    // above 200,000 input tokens every token pays the higher tier: 250,000 × $6/M + 1,000 × $22.50/M
    ['anthropic', 'claude-sonnet-4-5-20250929', 250_000, 1000, 1_522_500, 'claude-sonnet-4-5'],
    // 10,000 × $0.10/M + 10,000 × $0.30/M
    ['mistral', 'mistral-small-latest', 10_000, 10_000, 4_000, 'mistral-small-latest'],
  ] as const)('%s %s: %d in / %d out → %d µ$', (provider, model, input, output, micros, id) => {
    expect(book.price(provider, model, q(input, output))).toEqual({
      costMicros: micros,
      pricedAs: id,
      priceVersion: `${catalog}:${id}`,
    });
  });

  it('an override is laid over the catalog entry of the same name and versioned by the option', () => {
    const overrides = { 'gpt-4o': { outputPerMTok: 12 } };
    const withOverride = new PriceBook({ overrides, defaultModels: DEFAULT_MODELS });
    // 1,000 uncached × $2.50/M + 1,000 cached × $1.25/M (catalog) + 1,000 out × $12/M (override)
    const priced = withOverride.price('openai', 'gpt-4o-2024-08-06', {
      ...q(2000, 1000),
      cachedInputTokens: 1000,
    });
    expect(priced.costMicros).toBe(2_500 + 1_250 + 12_000);
    expect(priced.priceVersion).toMatch(/^options:[0-9a-f]{8}:gpt-4o$/);
    // Per-request providers keep this library's table: 3 searches × $0.001.
    expect(withOverride.price('tavily', undefined, { ...q(0, 0), searches: 3 })).toEqual({
      costMicros: 3_000,
      pricedAs: 'tavily',
      priceVersion: 'builtin:tavily',
    });
  });

  it('without the catalog, default models need prices of their own', () => {
    expect(() => new PriceBook({ catalog: false, defaultModels: DEFAULT_MODELS })).toThrow(
      'defaultModels.gemini names "gemini-2.5-flash", which has no price',
    );
    const own = new PriceBook({
      catalog: false,
      overrides: { 'gpt-4o-mini': { inputPerMTok: 1, outputPerMTok: 1 } },
      defaultModels: { openai: 'gpt-4o-mini' },
    });
    // gpt-4o is unknown without the catalog: the dearest known rates, here gpt-4o-mini's own.
    expect(own.price('openai', 'gpt-4o', q(1_000_000, 0))).toEqual({
      costMicros: 1_000_000,
      pricedAs: 'highest:openai',
      priceVersion: 'highest:openai:options',
    });
  });
});
