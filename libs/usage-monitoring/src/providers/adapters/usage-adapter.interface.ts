/** What a provider's response says about its own usage. Absent fields are unknown, not zero. */
export interface ProviderUsage {
  model?: string;
  /** All input tokens, including those read from or written to a prompt cache. */
  inputTokens?: number;
  /** Of the input, tokens read from the provider's prompt cache (priced lower). */
  cachedInputTokens?: number;
  /** Of the input, tokens written to the prompt cache (Anthropic; priced higher). */
  cacheWriteTokens?: number;
  /** All output tokens, including reasoning ("thinking") tokens. */
  outputTokens?: number;
  /** Of the output, reasoning tokens. */
  reasoningTokens?: number;
  /** Generated text, for estimating output tokens when the provider reports none. */
  outputText?: string;
  searches?: number;
  images?: number;
  pages?: number;
}

/** Reads one provider's response shape. */
export interface UsageAdapter {
  /** Token-priced providers are flagged `estimated` when their usage fields are missing. */
  readonly tokenBased: boolean;
  extract(response: unknown, request: unknown): ProviderUsage;
}
