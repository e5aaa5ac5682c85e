import { anthropicAdapter } from './anthropic.adapter';
import { geminiAdapter } from './gemini.adapter';
import { genericAdapter } from './generic.adapter';
import { openAiAdapter } from './openai.adapter';
import { crawlAdapter, searchAdapter } from './per-request.adapter';
import type { UsageAdapter } from './usage-adapter.interface';

/** Adapter per provider name; providers not listed use the generic rules. */
export const DEFAULT_ADAPTERS: Readonly<Record<string, UsageAdapter>> = {
  openai: openAiAdapter,
  mistral: openAiAdapter,
  anthropic: anthropicAdapter,
  gemini: geminiAdapter,
  tavily: searchAdapter,
  serper: searchAdapter,
  metaphor: searchAdapter,
  exa: searchAdapter,
  firecrawl: crawlAdapter,
};

export { genericAdapter };
export type { ProviderUsage, UsageAdapter } from './usage-adapter.interface';
