import type { PriceOverride } from './price.interface';

/**
 * This library's own prices (USD per unit) for the per-request providers, which the token catalog
 * (`@pydantic/genai-prices`) does not cover. Token prices come from that catalog; the `prices` option
 * overrides either.
 */
export const DEFAULT_PRICES: Readonly<Record<string, PriceOverride>> = {
  tavily: { perSearch: 0.001 },
  serper: { perSearch: 0.001 },
  metaphor: { perSearch: 0.003 },
  exa: { perSearch: 0.005 },
  firecrawl: { perPage: 0.002 },
  'stable-diffusion': { perImage: 0.04 },
};

/** Model assumed when a request names none (catalog ids). */
export const DEFAULT_MODELS: Readonly<Record<string, string>> = {
  gemini: 'gemini-2.5-flash',
  openai: 'gpt-4o-mini',
  anthropic: 'claude-3.5-sonnet',
  mistral: 'mistral-small-latest',
};
