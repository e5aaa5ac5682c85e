/** The original's provider patterns (case-insensitive, over path and User-Agent). */
export const DEFAULT_PROVIDER_PATTERNS: Readonly<Record<string, string>> = {
  gemini: 'gemini|google.*ai',
  openai: 'openai|gpt|chatgpt',
  anthropic: 'anthropic|claude',
  mistral: 'mistral',
  tavily: 'tavily',
  serper: 'serper',
  metaphor: 'metaphor|/exa',
  firecrawl: 'firecrawl',
};

export const DEFAULT_IGNORED_PATH_PREFIXES: readonly string[] = ['/api/onboarding/', '/api/subscription/'];

/**
 * Finds the provider of a request that carries no `@Metered` decorator. One combined expression
 * answers "no provider" with a single test, so unmetered routes pay almost nothing.
 */
export class ProviderDetector {
  private readonly entries: { provider: string; re: RegExp }[];
  private readonly any: RegExp | undefined;

  constructor(
    patterns: Readonly<Record<string, string | RegExp>>,
    private readonly ignoredPrefixes: readonly string[],
  ) {
    this.entries = Object.entries(patterns).map(([provider, p]) => ({
      provider,
      re:
        typeof p === 'string'
          ? new RegExp(p, 'i')
          : new RegExp(p.source, p.flags.includes('i') ? p.flags : `${p.flags}i`),
    }));
    this.any = this.entries.length
      ? new RegExp(this.entries.map((e) => `(?:${e.re.source})`).join('|'), 'i')
      : undefined;
  }

  detect(path: string, userAgent: string | undefined): string | undefined {
    if (!this.any) return undefined;
    for (const prefix of this.ignoredPrefixes) if (path.startsWith(prefix)) return undefined;
    const haystack = userAgent ? `${path}\n${userAgent}` : path;
    if (!this.any.test(haystack)) return undefined;
    for (const e of this.entries) if (e.re.test(path)) return e.provider;
    if (userAgent) for (const e of this.entries) if (e.re.test(userAgent)) return e.provider;
    return undefined;
  }
}
