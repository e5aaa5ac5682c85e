import {
  DEFAULT_IGNORED_PATH_PREFIXES,
  DEFAULT_PROVIDER_PATTERNS,
  ProviderDetector,
} from './provider-detector';

describe('ProviderDetector', () => {
  const byPath = new ProviderDetector(DEFAULT_PROVIDER_PATTERNS, DEFAULT_IGNORED_PATH_PREFIXES);
  const withUa = new ProviderDetector(
    DEFAULT_PROVIDER_PATTERNS,
    DEFAULT_IGNORED_PATH_PREFIXES,
    'path-and-user-agent',
  );

  it.each([
    ['/api/gemini/generate', 'gemini'],
    ['/v1/google-genai/x', 'gemini'],
    ['/gemini/v1beta/models/gemini-2.5-flash:generateContent', 'gemini'],
    ['/api/openai/chat', 'openai'],
    ['/api/GPT/complete', 'openai'],
    ['/OpenAI/v1/chat/completions', 'openai'],
    ['/api/claude', 'anthropic'],
    ['/api/mistral/chat', 'mistral'],
    ['/api/tavily/search', 'tavily'],
    ['/api/serper', 'serper'],
    ['/api/exa/search', 'metaphor'],
    ['/api/firecrawl/scrape', 'firecrawl'],
    // whole segments only
    ['/settings/gpt-preferences', undefined],
    ['/blog/openai-news', undefined],
    ['/api/examples', undefined],
    ['/api/claudette', undefined],
    ['/api/gptx/complete', undefined],
    // ignored prefixes, in any case
    ['/api/onboarding/openai', undefined],
    ['/api/Onboarding/openai', undefined],
    ['/API/SUBSCRIPTION/gpt', undefined],
    ['/hello', undefined],
  ])('%s → %s', (path, provider) => {
    expect(byPath.detect(path, undefined)).toBe(provider);
  });

  it('ignores the client-controlled User-Agent unless the host turns it on', () => {
    expect(byPath.detect('/api/documents', 'OpenAI/JS 4.77.0')).toBeUndefined();
    expect(byPath.detect('/blog/posts', 'Mozilla/5.0 (compatible; GPTBot/1.2)')).toBeUndefined();
    expect(byPath.detect('/api/documents', 'curl/8.5.0')).toBeUndefined();

    expect(withUa.detect('/api/documents', 'OpenAI/JS 4.77.0')).toBe('openai');
    expect(withUa.detect('/api/documents', 'Anthropic/JS 0.30')).toBe('anthropic');
    expect(withUa.detect('/api/documents', 'Mozilla/5.0')).toBeUndefined();
    expect(withUa.detect('/api/tavily/search', 'OpenAI/JS 4')).toBe('tavily'); // the path wins
  });

  it('anchors custom patterns to a segment, strings and RegExps alike, and never keeps state', () => {
    const d = new ProviderDetector({ acme: 'acme(-llm)?', other: /ot+her/g }, []);
    expect(d.detect('/v1/ACME-llm/run', undefined)).toBe('acme');
    expect(d.detect('/v1/acme-llm-beta/run', undefined)).toBeUndefined();
    for (let i = 0; i < 3; i++) expect(d.detect('/x/otttther', undefined)).toBe('other');
  });
});
