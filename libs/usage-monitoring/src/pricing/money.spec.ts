import { formatUsd, microsToUsd, usdToMicros } from './money';
import { PriceBook } from './price-book';
import { DEFAULT_MODELS, DEFAULT_PRICES } from './default-prices';

describe('money', () => {
  it('1,000,000 charges of one micro-dollar sum to exactly 1.000000 USD', () => {
    let total = 0;
    for (let i = 0; i < 1_000_000; i++) total += 1;
    expect(formatUsd(total)).toBe('1.000000');
    expect(microsToUsd(total)).toBe(1);
  });

  it('converts configured dollars exactly and refuses what is not money', () => {
    expect(usdToMicros(0.1 + 0.2, 'x')).toBe(300_000);
    expect(usdToMicros(2, 'x')).toBe(2_000_000);
    expect(() => usdToMicros(-1, 'plans[0].max')).toThrow(
      'plans[0].max must be a finite, non-negative number',
    );
    expect(() => usdToMicros(Number.NaN, 'x')).toThrow('finite');
    expect(() => usdToMicros(0.0000001, 'x')).toThrow('more than 6 decimals');
    expect(formatUsd(1_234_567)).toBe('1.234567');
    expect(formatUsd(5)).toBe('0.000005');
  });
});

describe('PriceBook', () => {
  const book = new PriceBook({
    builtin: DEFAULT_PRICES,
    overrides: { 'my-model': { inputPerMTok: 1, outputPerMTok: 2, perRequest: 0.01 } },
    defaultModels: DEFAULT_MODELS,
  });
  const q = (inputTokens: number, outputTokens: number, searches = 0) => ({
    inputTokens,
    outputTokens,
    searches,
    images: 0,
    pages: 0,
  });

  it.each([
    ['openai', 'gpt-4o', 1_000_000, 1_000_000, 12_500_000],
    ['openai', 'gpt-4o-mini', 1000, 500, 450],
    ['openai', undefined, 1000, 500, 450],
    ['anthropic', 'claude-3.5-sonnet', 10, 10, 180],
    ['anthropic', 'claude-3.5-sonnet', 1, 0, 3],
    ['openai', 'gpt-4o-mini', 1, 0, 1],
    ['gemini', 'gemini-2.5-flash', 2000, 1000, 3100],
    ['custom', 'my-model', 1_000_000, 0, 1_010_000],
  ])('%s %s: %i in / %i out costs %i µ$', (provider, model, input, output, cost) => {
    expect(book.price(provider, model, q(input, output)).costMicros).toBe(cost);
  });

  it('prices searches per provider', () => {
    expect(book.price('tavily', undefined, q(0, 0, 1)).costMicros).toBe(1000);
    expect(book.price('exa', undefined, q(0, 0, 2)).costMicros).toBe(10_000);
  });

  it('unknown providers cost nothing', () => {
    expect(book.price('nobody', 'nothing', q(100, 100))).toEqual({ costMicros: 0 });
  });
});
