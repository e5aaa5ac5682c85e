/**
 * The default detection patterns. Each matches one whole path segment, case-insensitively: `/api/openai/chat`
 * and `/OpenAI/v1` are OpenAI calls, `/settings/gpt-preferences` and `/blog/openai-news` are not.
 */
export const DEFAULT_PROVIDER_PATTERNS: Readonly<Record<string, string>> = {
  gemini: 'gemini|google-?(gen)?ai',
  openai: 'openai|chatgpt|gpt',
  anthropic: 'anthropic|claude',
  mistral: 'mistral|mistralai',
  tavily: 'tavily',
  serper: 'serper',
  metaphor: 'metaphor|exa',
  firecrawl: 'firecrawl',
};

export const DEFAULT_IGNORED_PATH_PREFIXES: readonly string[] = ['/api/onboarding/', '/api/subscription/'];

/** What detection looks at: the path only (the default), or also the client's User-Agent. */
export type DetectionMode = 'path' | 'path-and-user-agent';

interface Entry {
  provider: string;
  /** The pattern anchored to a whole path segment. */
  segment: RegExp;
  /** The pattern anywhere in a string (the User-Agent). */
  anywhere: RegExp;
}

/**
 * Finds the provider of a request that carries no `@Metered` decorator, from the segments of its path
 * (and, only when the host asks for it, from its User-Agent: a header the client controls must not
 * decide by default whether a request is limited). One combined expression answers "no provider" with a
 * single test, so unmetered routes pay almost nothing.
 */
export class ProviderDetector {
  private readonly entries: Entry[];
  private readonly any: RegExp | undefined;
  private readonly ignoredPrefixes: readonly string[];

  constructor(
    patterns: Readonly<Record<string, string | RegExp>>,
    ignoredPrefixes: readonly string[],
    readonly mode: DetectionMode = 'path',
  ) {
    this.entries = Object.entries(patterns).map(([provider, p]) => {
      const source = typeof p === 'string' ? p : p.source;
      // Case-insensitive always; never global or sticky (`test` would then carry state between requests).
      const own = typeof p === 'string' ? '' : p.flags.replace(/[giy]/g, '');
      const flags = `${own}i`;
      return {
        provider,
        segment: new RegExp(`^(?:${source})$`, flags),
        anywhere: new RegExp(source, flags),
      };
    });
    this.any = this.entries.length
      ? new RegExp(this.entries.map((e) => `(?:${e.anywhere.source})`).join('|'), 'i')
      : undefined;
    this.ignoredPrefixes = ignoredPrefixes.map((p) => p.toLowerCase());
  }

  detect(path: string, userAgent: string | undefined): string | undefined {
    if (!this.any) return undefined;
    const ua = this.mode === 'path-and-user-agent' ? userAgent : undefined;
    if (!this.any.test(path) && !(ua && this.any.test(ua))) return undefined;
    const lower = path.toLowerCase();
    for (const prefix of this.ignoredPrefixes) if (lower.startsWith(prefix)) return undefined;
    const segments = path.split('/');
    for (const e of this.entries) if (segments.some((s) => e.segment.test(s))) return e.provider;
    if (ua) for (const e of this.entries) if (e.anywhere.test(ua)) return e.provider;
    return undefined;
  }
}
