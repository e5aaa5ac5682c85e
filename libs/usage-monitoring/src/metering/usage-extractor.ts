import { DEFAULT_ADAPTERS, genericAdapter, type UsageAdapter } from '../providers/adapters';
import type { UsageQuantities } from '../pricing/price.interface';
import type { StreamUsage } from './stream-usage';
import { count, isObject, requestText } from './text-fields';
import { estimateTokens } from './token-estimator';

/** Quantities of one request with the model they were priced by. */
export interface MeasuredUsage extends UsageQuantities {
  model?: string;
  /** True when any token figure is an estimate rather than the provider's own. */
  estimated: boolean;
}

/**
 * Turns request and response bodies into usage: before the call an upper-bound estimate for the
 * reservation, after it the provider's own figures (estimated where missing).
 */
export class UsageExtractor {
  constructor(
    private readonly defaultMaxOutputTokens: number,
    private readonly adapters: Readonly<Record<string, UsageAdapter>> = DEFAULT_ADAPTERS,
  ) {}

  /** Estimate for the reservation: input from the prompt fields, output bounded by `max_tokens` & co. */
  estimate(provider: string, body: unknown, model?: string): MeasuredUsage {
    const adapter = this.adapters[provider] ?? genericAdapter;
    const unit = adapter.extract(undefined, body);
    const req = isObject(body) ? body : {};
    const quantities = {
      searches: unit.searches ?? 0,
      images: unit.images ?? 0,
      pages: unit.pages ?? 0,
    };
    if (!adapter.tokenBased) {
      return { ...quantities, inputTokens: 0, outputTokens: 0, model: model ?? unit.model, estimated: true };
    }
    const generation = isObject(req.generationConfig) ? req.generationConfig : {};
    const outputBound =
      count(req.max_tokens) ??
      count(req.max_output_tokens) ??
      count(req.max_completion_tokens) ??
      count(generation.maxOutputTokens) ??
      this.defaultMaxOutputTokens;
    const named = typeof req.model === 'string' ? req.model : model;
    return {
      ...quantities,
      model: named,
      inputTokens: estimateTokens(requestText(body), named),
      outputTokens: outputBound,
      estimated: true,
    };
  }

  /** Actual usage after the call: the provider's usage fields, estimates (flagged) where absent. */
  measure(provider: string, requestBody: unknown, responseBody: unknown, model?: string): MeasuredUsage {
    const adapter = this.adapters[provider] ?? genericAdapter;
    const u = adapter.extract(responseBody, requestBody);
    const quantities = { searches: u.searches ?? 0, images: u.images ?? 0, pages: u.pages ?? 0 };
    if (!adapter.tokenBased) {
      return { ...quantities, inputTokens: 0, outputTokens: 0, model: u.model ?? model, estimated: false };
    }
    let estimated = false;
    const named = u.model ?? model;
    let inputTokens = u.inputTokens;
    if (inputTokens === undefined) {
      inputTokens = estimateTokens(requestText(requestBody), named);
      estimated = true;
    }
    let outputTokens = u.outputTokens;
    if (outputTokens === undefined) {
      outputTokens = estimateTokens(u.outputText ?? '', named);
      estimated = true;
    }
    return {
      ...quantities,
      inputTokens,
      outputTokens,
      cachedInputTokens: u.cachedInputTokens,
      cacheWriteTokens: u.cacheWriteTokens,
      reasoningTokens: u.reasoningTokens,
      model: u.model ?? model,
      estimated,
    };
  }

  /**
   * Usage of a streamed answer: the provider's own figures when its final usage arrived; otherwise (the
   * client left, or the stream ended without usage) input as the provider reported it so far (else
   * estimated from the request), output as the larger of the provider's figure so far and the tokens of
   * the text produced so far — flagged `estimated`, never 0 for text that was streamed.
   */
  measureStream(provider: string, requestBody: unknown, stream: StreamUsage, model?: string): MeasuredUsage {
    const u = this.measure(provider, requestBody, stream.response(), stream.model ?? model);
    if (stream.final && !u.estimated) return u;
    // The response carries no text, so an output figure the provider did not report measures 0 here.
    const produced = (this.adapters[provider] ?? genericAdapter).tokenBased ? stream.producedTokens() : 0;
    return { ...u, outputTokens: Math.max(u.outputTokens, produced), estimated: true };
  }
}
