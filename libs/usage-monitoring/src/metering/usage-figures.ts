import { count, isObject } from './text-fields';

/**
 * Usage stated by the app instead of read from a provider's response: what `@Metered({ usage })`, a
 * `UsageMeter` call or a charge's `settle()` may return. Absent figures count as 0; token figures follow the
 * providers' convention (input includes cached and cache-write tokens, output includes reasoning tokens).
 *
 * @example
 * ```ts
 * charge.settle({ model: 'gpt-4o-mini', inputTokens: 812, outputTokens: 240 });
 * ```
 */
export interface UsageFigures {
  /** The model that answered; priced by it (else the `@Metered`/spec model, else the provider's default). */
  model?: string;
  inputTokens?: number;
  outputTokens?: number;
  /** Of the input, tokens read from the provider's prompt cache. */
  cachedInputTokens?: number;
  /** Of the input, tokens written to the prompt cache. */
  cacheWriteTokens?: number;
  /** Of the output, reasoning tokens. */
  reasoningTokens?: number;
  searches?: number;
  images?: number;
  pages?: number;
}

/**
 * What a call is reserved for before it runs, when the provider-shaped request is not at hand: the prompt
 * text (counted with the model's tokenizer) or input tokens, and the bound on output tokens.
 *
 * @example
 * ```ts
 * { text: body.message, maxOutputTokens: 500 }
 * ```
 */
export interface UsageEstimate {
  /** Prompt text; its tokens are counted and added to `inputTokens`. */
  text?: string;
  inputTokens?: number;
  /** Bound on the answer's tokens. @default the module's `defaultMaxOutputTokens` for token-priced providers */
  maxOutputTokens?: number;
  searches?: number;
  images?: number;
  pages?: number;
}

const FIGURE_KEYS = new Set([
  'model',
  'inputTokens',
  'outputTokens',
  'cachedInputTokens',
  'cacheWriteTokens',
  'reasoningTokens',
  'searches',
  'images',
  'pages',
]);

const NUMERIC_KEYS = [...FIGURE_KEYS].filter((k) => k !== 'model');

/**
 * True for a plain object that names only `UsageFigures` fields, at least one of them set: usage the
 * app states. A provider's response (`usage`, `usageMetadata`, `choices`…) is never one.
 */
export function isUsageFigures(v: unknown): v is UsageFigures {
  if (!isObject(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) return false;
  let numeric = false;
  for (const k of Object.keys(v)) {
    if (!FIGURE_KEYS.has(k)) return false;
    if (k !== 'model' && v[k] !== undefined) numeric = true;
  }
  return numeric;
}

/** Checks stated figures: each a non-negative safe integer, or absent. */
export function checkFigures(v: UsageFigures | UsageEstimate, what: string): void {
  for (const k of [...NUMERIC_KEYS, 'maxOutputTokens']) {
    const x = (v as Record<string, unknown>)[k];
    if (x !== undefined && count(x) === undefined)
      throw new TypeError(`${what}: ${k} must be a non-negative integer, got ${JSON.stringify(x)}`);
  }
  const model = (v as UsageFigures).model;
  if (model !== undefined && typeof model !== 'string')
    throw new TypeError(`${what}: model must be a string, got ${JSON.stringify(model)}`);
  const text = (v as UsageEstimate).text;
  if (text !== undefined && typeof text !== 'string')
    throw new TypeError(`${what}: text must be a string, got ${typeof text}`);
}
