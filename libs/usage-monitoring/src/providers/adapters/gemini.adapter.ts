import { collect, count, isObject } from '../../metering/text-fields';
import type { ProviderUsage, UsageAdapter } from './usage-adapter.interface';

/** Gemini generateContent: `usageMetadata.promptTokenCount` / `candidatesTokenCount`. */
export const geminiAdapter: UsageAdapter = {
  tokenBased: true,
  extract(response, request): ProviderUsage {
    if (!isObject(response)) return {};
    const usage = isObject(response.usageMetadata) ? response.usageMetadata : {};
    const text: string[] = [];
    if (Array.isArray(response.candidates)) {
      for (const c of response.candidates)
        if (isObject(c) && isObject(c.content)) collect(c.content.parts, text);
    }
    const model =
      typeof response.modelVersion === 'string'
        ? response.modelVersion
        : isObject(request) && typeof request.model === 'string'
          ? request.model
          : undefined;
    // promptTokenCount includes cachedContentTokenCount; thoughtsTokenCount is billed as output beside
    // candidatesTokenCount.
    const candidates = count(usage.candidatesTokenCount);
    const thoughts = count(usage.thoughtsTokenCount) ?? 0;
    return {
      model,
      inputTokens: count(usage.promptTokenCount),
      cachedInputTokens: count(usage.cachedContentTokenCount),
      outputTokens: candidates === undefined ? undefined : candidates + thoughts,
      reasoningTokens: thoughts,
      outputText: text.join('\n'),
    };
  },
};
