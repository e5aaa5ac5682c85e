import type { ProviderUsage, UsageAdapter } from './usage-adapter.interface';

/** Providers priced per search (Tavily, Serper, Exa/Metaphor): one search per request. */
export const searchAdapter: UsageAdapter = {
  tokenBased: false,
  extract: (): ProviderUsage => ({ searches: 1 }),
};

/** Crawlers priced per page (Firecrawl): one page per request. */
export const crawlAdapter: UsageAdapter = {
  tokenBased: false,
  extract: (): ProviderUsage => ({ pages: 1 }),
};
