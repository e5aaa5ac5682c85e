/** What a provider's response says about its own usage. Absent fields are unknown, not zero. */
export interface ProviderUsage {
  model?: string;
  inputTokens?: number;
  outputTokens?: number;
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
