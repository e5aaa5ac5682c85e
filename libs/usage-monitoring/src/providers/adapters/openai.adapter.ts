import { collect, count, isObject } from '../../metering/text-fields';
import type { ProviderUsage, UsageAdapter } from './usage-adapter.interface';

/** OpenAI chat completions and responses API; Mistral answers in the same shape. */
export const openAiAdapter: UsageAdapter = {
  tokenBased: true,
  extract(response, request): ProviderUsage {
    if (!isObject(response)) return {};
    const usage = isObject(response.usage) ? response.usage : {};
    const text: string[] = [];
    if (Array.isArray(response.choices)) {
      for (const c of response.choices) {
        if (isObject(c)) collect(isObject(c.message) ? c.message.content : c.text, text);
      }
    }
    if (typeof response.output_text === 'string') text.push(response.output_text);
    else if (Array.isArray(response.output))
      for (const o of response.output) if (isObject(o)) collect(o.content, text);
    // Chat completions: prompt_tokens(_details.cached_tokens), completion_tokens(_details.reasoning_tokens);
    // responses API: input_tokens(_details.cached_tokens), output_tokens(_details.reasoning_tokens).
    const inDetails = detailsOf(usage.prompt_tokens_details ?? usage.input_tokens_details);
    const outDetails = detailsOf(usage.completion_tokens_details ?? usage.output_tokens_details);
    return {
      model: modelOf(response, request),
      inputTokens: count(usage.prompt_tokens) ?? count(usage.input_tokens),
      cachedInputTokens: count(inDetails.cached_tokens),
      outputTokens: count(usage.completion_tokens) ?? count(usage.output_tokens),
      reasoningTokens: count(outDetails.reasoning_tokens),
      outputText: text.join('\n'),
    };
  },
};

const detailsOf = (v: unknown): Record<string, unknown> => (isObject(v) ? v : {});

export function modelOf(response: Record<string, unknown>, request: unknown): string | undefined {
  if (typeof response.model === 'string') return response.model;
  if (isObject(request) && typeof request.model === 'string') return request.model;
  return undefined;
}
