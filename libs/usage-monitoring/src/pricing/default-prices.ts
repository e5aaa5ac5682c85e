import type { PriceOverride } from './price.interface';

/**
 * Starting price table (USD), from the system this library replaces.
 * Token prices are per 1M tokens; the rest per unit.
 */
export const DEFAULT_PRICES: Readonly<Record<string, PriceOverride>> = {
  'gemini-2.5-pro': { inputPerMTok: 1.25, outputPerMTok: 10 },
  'gemini-2.5-flash': { inputPerMTok: 0.3, outputPerMTok: 2.5 },
  'gemini-2.5-flash-lite': { inputPerMTok: 0.1, outputPerMTok: 0.4 },
  'gemini-1.5-flash': { inputPerMTok: 0.075, outputPerMTok: 0.3 },
  'gemini-1.5-pro': { inputPerMTok: 1.25, outputPerMTok: 5 },
  'gpt-4o': { inputPerMTok: 2.5, outputPerMTok: 10, cachedInputPerMTok: 1.25 },
  'gpt-4o-mini': { inputPerMTok: 0.15, outputPerMTok: 0.6, cachedInputPerMTok: 0.075 },
  'claude-3.5-sonnet': {
    inputPerMTok: 3,
    outputPerMTok: 15,
    cachedInputPerMTok: 0.3,
    cacheWritePerMTok: 3.75,
  },
  // The API's own id of the same model.
  'claude-3-5-sonnet': {
    inputPerMTok: 3,
    outputPerMTok: 15,
    cachedInputPerMTok: 0.3,
    cacheWritePerMTok: 3.75,
  },
  'mistral-small': { inputPerMTok: 0.2, outputPerMTok: 0.6 },
  tavily: { perSearch: 0.001 },
  serper: { perSearch: 0.001 },
  metaphor: { perSearch: 0.003 },
  exa: { perSearch: 0.005 },
  firecrawl: { perPage: 0.002 },
  'stable-diffusion': { perImage: 0.04 },
};

/** Model assumed when a request names none. */
export const DEFAULT_MODELS: Readonly<Record<string, string>> = {
  gemini: 'gemini-2.5-flash',
  openai: 'gpt-4o-mini',
  anthropic: 'claude-3.5-sonnet',
  mistral: 'mistral-small',
};
