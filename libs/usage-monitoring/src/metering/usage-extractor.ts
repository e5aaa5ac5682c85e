import {
  DEFAULT_ADAPTERS,
  genericAdapter,
  type ProviderUsage,
  type UsageAdapter,
} from '../providers/adapters';
import type { UsageQuantities } from '../pricing/price.interface';
import type { StreamUsage } from './stream-usage';
import { count, isObject, requestText } from './text-fields';
import { estimateTokens } from './token-estimator';
import { isUsageFigures, type UsageEstimate, type UsageFigures } from './usage-figures';

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

  /**
   * Estimate for the reservation: input from the prompt fields, output bounded by `max_tokens` & co. A body
   * without any provider prompt field (an app's own `{ message }`) has the text of all its string fields
   * counted instead, so that it never reserves 0 input tokens for text it carries.
   */
  estimate(provider: string, body: unknown, model?: string): MeasuredUsage {
    const adapter = this.adapters[provider] ?? genericAdapter;
    const unit = adapter.extract(undefined, body);
    const req = isObject(body) ? body : {};
    if (!adapter.tokenBased) return untokened(unit, model ?? unit.model, true);
    const searches = unit.searches ?? 0;
    const images = unit.images ?? 0;
    const pages = unit.pages ?? 0;
    const generation = isObject(req.generationConfig) ? req.generationConfig : {};
    const outputBound =
      count(req.max_tokens) ??
      count(req.max_output_tokens) ??
      count(req.max_completion_tokens) ??
      count(generation.maxOutputTokens) ??
      this.defaultMaxOutputTokens;
    const named = typeof req.model === 'string' ? req.model : model;
    return {
      searches,
      images,
      pages,
      model: named,
      inputTokens: estimateTokens(requestText(body) || anyText(body), named),
      outputTokens: outputBound,
      estimated: true,
    };
  }

  /** The reservation for an estimate the app states: its text counted, unstated figures as for an empty request. */
  estimateFrom(provider: string, stated: UsageEstimate, model?: string): MeasuredUsage {
    const base = this.estimate(provider, undefined, model);
    const text = stated.text ? estimateTokens(stated.text, model) : 0;
    const tokenBased = (this.adapters[provider] ?? genericAdapter).tokenBased;
    return {
      model,
      inputTokens: (stated.inputTokens ?? 0) + text,
      outputTokens: stated.maxOutputTokens ?? (tokenBased ? base.outputTokens : 0),
      searches: stated.searches ?? base.searches,
      images: stated.images ?? base.images,
      pages: stated.pages ?? base.pages,
      estimated: true,
    };
  }

  /**
   * Usage after the call from whatever the call returned: figures the app states (`UsageFigures`) as they
   * are; a provider's response through its adapter. When a token-priced provider's response reports no
   * tokens and carries no text to count (an app-shaped body), the admission's `estimate` is charged instead,
   * flagged — `reported` is false then, so that the caller can say so.
   */
  settleUsage(
    provider: string,
    requestBody: unknown,
    result: unknown,
    model: string | undefined,
    estimate: MeasuredUsage | undefined,
  ): { usage: MeasuredUsage; reported: boolean } {
    if (isUsageFigures(result)) return { usage: fromFigures(result, model), reported: true };
    const adapter = this.adapters[provider] ?? genericAdapter;
    const u = adapter.extract(result, requestBody);
    if (
      estimate &&
      adapter.tokenBased &&
      u.inputTokens === undefined &&
      u.outputTokens === undefined &&
      !u.outputText
    ) {
      return {
        usage: withModel(estimate, u.model ?? estimate.model ?? model),
        reported: false,
      };
    }
    return { usage: this.fromProvider(adapter, u, requestBody, model), reported: true };
  }

  /** Actual usage after the call: the provider's usage fields, estimates (flagged) where absent. */
  measure(provider: string, requestBody: unknown, responseBody: unknown, model?: string): MeasuredUsage {
    const adapter = this.adapters[provider] ?? genericAdapter;
    return this.fromProvider(adapter, adapter.extract(responseBody, requestBody), requestBody, model);
  }

  private fromProvider(
    adapter: UsageAdapter,
    u: ReturnType<UsageAdapter['extract']>,
    requestBody: unknown,
    model: string | undefined,
  ): MeasuredUsage {
    if (!adapter.tokenBased) return untokened(u, u.model ?? model, false);
    const searches = u.searches ?? 0;
    const images = u.images ?? 0;
    const pages = u.pages ?? 0;
    let estimated = false;
    const named = u.model ?? model;
    let inputTokens = u.inputTokens;
    if (inputTokens === undefined) {
      inputTokens = estimateTokens(requestText(requestBody) || anyText(requestBody), named);
      estimated = true;
    }
    let outputTokens = u.outputTokens;
    if (outputTokens === undefined) {
      outputTokens = estimateTokens(u.outputText ?? '', named);
      estimated = true;
    }
    return {
      searches,
      images,
      pages,
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
    const usage = withModel(u, u.model);
    usage.outputTokens = Math.max(u.outputTokens, produced);
    return usage;
  }
}

/** The usage of a provider that is not priced by tokens (searches, images, pages). */
function untokened(u: ProviderUsage, model: string | undefined, estimated: boolean): MeasuredUsage {
  return {
    searches: u.searches ?? 0,
    images: u.images ?? 0,
    pages: u.pages ?? 0,
    inputTokens: 0,
    outputTokens: 0,
    model,
    estimated,
  };
}

/**
 * An estimated copy of `u` with `model`, written out: V8 (Node 20) gives an object literal that starts with a
 * spread and adds properties after it a new hidden class on every call (~2.6 KB of garbage for this shape,
 * against ~100 bytes for the literal), and these run on every metered request.
 */
function withModel(u: MeasuredUsage, model: string | undefined): MeasuredUsage {
  return {
    searches: u.searches,
    images: u.images,
    pages: u.pages,
    inputTokens: u.inputTokens,
    outputTokens: u.outputTokens,
    cachedInputTokens: u.cachedInputTokens,
    cacheWriteTokens: u.cacheWriteTokens,
    reasoningTokens: u.reasoningTokens,
    model,
    estimated: true,
  };
}

function fromFigures(f: UsageFigures, model: string | undefined): MeasuredUsage {
  return {
    model: f.model ?? model,
    inputTokens: f.inputTokens ?? 0,
    outputTokens: f.outputTokens ?? 0,
    cachedInputTokens: f.cachedInputTokens,
    cacheWriteTokens: f.cacheWriteTokens,
    reasoningTokens: f.reasoningTokens,
    searches: f.searches ?? 0,
    images: f.images ?? 0,
    pages: f.pages ?? 0,
    estimated: false,
  };
}

/** Text of every string field of an app's own body (not `model`), a few levels deep. */
function anyText(body: unknown): string {
  if (!isObject(body)) return typeof body === 'string' ? body : '';
  const parts: string[] = [];
  const walk = (v: unknown, depth: number) => {
    if (depth > 4 || parts.length > 256) return;
    if (typeof v === 'string') parts.push(v);
    else if (Array.isArray(v)) for (const x of v) walk(x, depth + 1);
    else if (isObject(v)) for (const k of Object.keys(v)) if (k !== 'model') walk(v[k], depth + 1);
  };
  walk(body, 0);
  return parts.join('\n');
}
