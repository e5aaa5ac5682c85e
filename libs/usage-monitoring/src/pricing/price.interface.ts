/** Prices in US dollars, as a user writes them in the options. Absent fields cost nothing. */
export interface PriceOverride {
  /** USD per 1M input tokens. */
  inputPerMTok?: number;
  /** USD per 1M output tokens. */
  outputPerMTok?: number;
  /** USD per 1M input tokens read from a prompt cache. @default inputPerMTok */
  cachedInputPerMTok?: number;
  /** USD per 1M input tokens written to a prompt cache. @default inputPerMTok */
  cacheWritePerMTok?: number;
  /** USD per 1M reasoning tokens. @default outputPerMTok */
  reasoningPerMTok?: number;
  /** USD per request. */
  perRequest?: number;
  /** USD per search. */
  perSearch?: number;
  /** USD per generated image. */
  perImage?: number;
  /** USD per crawled page. */
  perPage?: number;
}

/** Token rates in integer micro-dollars per 1M tokens. */
export interface TokenRates {
  inputPerMTok: number;
  outputPerMTok: number;
  cachedInputPerMTok: number;
  cacheWritePerMTok: number;
  reasoningPerMTok: number;
}

/** A price in integer micro-dollars (per 1M tokens for the token fields). */
export interface Price extends TokenRates {
  perRequest: number;
  perSearch: number;
  perImage: number;
  perPage: number;
  /**
   * Long-context tiers, highest first: a request whose input exceeds `above` tokens pays `rates` for all
   * its tokens (as the catalog prices them).
   */
  tiers?: { above: number; rates: TokenRates }[];
}

/** The quantities a request consumed (or is estimated to consume). */
export interface UsageQuantities {
  /** All input tokens (cache reads and writes included). */
  inputTokens: number;
  /** All output tokens (reasoning included). */
  outputTokens: number;
  cachedInputTokens?: number;
  cacheWriteTokens?: number;
  reasoningTokens?: number;
  searches: number;
  images: number;
  pages: number;
}
