import { collect, count, isObject } from '../../metering/text-fields';
import { modelOf } from './openai.adapter';
import type { ProviderUsage, UsageAdapter } from './usage-adapter.interface';

/** Anthropic messages: `usage.input_tokens` / `output_tokens`, text in `content[]`. */
export const anthropicAdapter: UsageAdapter = {
  tokenBased: true,
  extract(response, request): ProviderUsage {
    if (!isObject(response)) return {};
    const usage = isObject(response.usage) ? response.usage : {};
    const text: string[] = [];
    collect(response.content, text);
    // input_tokens excludes the cache: reads and writes are reported beside it and billed differently.
    const uncached = count(usage.input_tokens);
    const read = count(usage.cache_read_input_tokens) ?? 0;
    const written = count(usage.cache_creation_input_tokens) ?? 0;
    return {
      model: modelOf(response, request),
      inputTokens: uncached === undefined ? undefined : uncached + read + written,
      cachedInputTokens: read,
      cacheWriteTokens: written,
      outputTokens: count(usage.output_tokens),
      outputText: text.join('\n'),
    };
  },
};
