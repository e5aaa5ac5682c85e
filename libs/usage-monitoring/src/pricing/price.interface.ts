/** Prices in US dollars, as a user writes them in the options. Absent fields cost nothing. */
export interface PriceOverride {
  /** USD per 1M input tokens. */
  inputPerMTok?: number;
  /** USD per 1M output tokens. */
  outputPerMTok?: number;
  /** USD per request. */
  perRequest?: number;
  /** USD per search. */
  perSearch?: number;
  /** USD per generated image. */
  perImage?: number;
  /** USD per crawled page. */
  perPage?: number;
}

/** A price in integer micro-dollars (per 1M tokens for the token fields). */
export interface Price {
  inputPerMTok: number;
  outputPerMTok: number;
  perRequest: number;
  perSearch: number;
  perImage: number;
  perPage: number;
}

/** The quantities a request consumed (or is estimated to consume). */
export interface UsageQuantities {
  inputTokens: number;
  outputTokens: number;
  searches: number;
  images: number;
  pages: number;
}
