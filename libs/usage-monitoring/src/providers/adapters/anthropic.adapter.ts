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
    return {
      model: modelOf(response, request),
      inputTokens: count(usage.input_tokens),
      outputTokens: count(usage.output_tokens),
      outputText: text.join('\n'),
    };
  },
};
