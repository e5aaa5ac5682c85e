import {
  DEFAULT_IGNORED_PATH_PREFIXES,
  DEFAULT_PROVIDER_PATTERNS,
  ProviderDetector,
} from './provider-detector';

describe('ProviderDetector', () => {
  const d = new ProviderDetector(DEFAULT_PROVIDER_PATTERNS, DEFAULT_IGNORED_PATH_PREFIXES);

  it.each([
    ['/api/gemini/generate', undefined, 'gemini'],
    ['/v1/google-genai/x', undefined, 'gemini'],
    ['/api/openai/chat', undefined, 'openai'],
    ['/api/GPT/complete', undefined, 'openai'],
    ['/api/claude', undefined, 'anthropic'],
    ['/api/mistral/chat', undefined, 'mistral'],
    ['/api/tavily/search', undefined, 'tavily'],
    ['/api/serper', undefined, 'serper'],
    ['/api/exa/search', undefined, 'metaphor'],
    ['/api/firecrawl/scrape', undefined, 'firecrawl'],
    ['/api/documents', 'OpenAI/JS 4.77.0', 'openai'],
    ['/api/documents', 'Anthropic/JS 0.30', 'anthropic'],
    ['/api/documents', 'Mozilla/5.0', undefined],
    ['/api/onboarding/openai-setup', undefined, undefined],
    ['/api/subscription/gpt', undefined, undefined],
    ['/hello', undefined, undefined],
  ])('%s (UA %s) → %s', (path, ua, provider) => {
    expect(d.detect(path, ua)).toBe(provider);
  });

  it('the path wins over the User-Agent', () => {
    expect(d.detect('/api/tavily/search', 'OpenAI/JS 4')).toBe('tavily');
  });
});
