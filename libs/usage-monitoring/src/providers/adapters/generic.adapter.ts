import { collect, count, isObject } from '../../metering/text-fields';
import { modelOf } from './openai.adapter';
import type { ProviderUsage, UsageAdapter } from './usage-adapter.interface';

/**
 * The original's rules for providers without an adapter: model from `model`; output text from `text`,
 * `content` or `choices[0].message.content`; `usage.prompt_tokens` / `completion_tokens` when present;
 * a `query`/`search` field is one search, `image`/`generate_image` one image, `url`/`crawl` one page.
 */
export const genericAdapter: UsageAdapter = {
  tokenBased: true,
  extract(response, request): ProviderUsage {
    const req = isObject(request) ? request : {};
    const searches = req.query !== undefined || req.search !== undefined ? 1 : 0;
    const images = req.image !== undefined || req.generate_image !== undefined ? 1 : 0;
    const pages = req.url !== undefined || req.crawl !== undefined ? 1 : 0;
    if (!isObject(response)) return { searches, images, pages };
    const usage = isObject(response.usage) ? response.usage : {};
    const text: string[] = [];
    if (typeof response.text === 'string') text.push(response.text);
    else if (response.content !== undefined) collect(response.content, text);
    else if (Array.isArray(response.choices) && isObject(response.choices[0])) {
      const first = response.choices[0];
      collect(isObject(first.message) ? first.message.content : first.text, text);
    }
    return {
      searches,
      images,
      pages,
      model: modelOf(response, request),
      inputTokens: count(usage.prompt_tokens),
      outputTokens: count(usage.completion_tokens),
      outputText: text.join('\n'),
    };
  },
};
