import { Logger } from '@nestjs/common';
import { escapeForLog } from '../enforcement/throttled-logger';
import type { Price, PriceOverride, UsageQuantities } from './price.interface';
import { usdToMicros } from './money';

const FIELDS = [
  'inputPerMTok',
  'outputPerMTok',
  'cachedInputPerMTok',
  'cacheWritePerMTok',
  'reasoningPerMTok',
  'perRequest',
  'perSearch',
  'perImage',
  'perPage',
] as const satisfies readonly (keyof Price)[];

/**
 * What to do with a model the price book does not know:
 * - `default-price`: price it as the provider's default model (a warning once per model);
 * - `allow-unpriced`: record its tokens at no token cost (a warning once per model);
 * - `deny`: refuse requests that name it (400 `USAGE_UNKNOWN_MODEL`) before they reach the provider;
 *   a response that names one is priced as `default-price`.
 */
export type UnknownModelPolicy = 'deny' | 'allow-unpriced' | 'default-price';

/** What the price book answers for one request. */
export interface PricedUsage {
  costMicros: number;
  /** The model or provider whose price applied; `undefined` when none did (cost 0). */
  pricedAs?: string;
}

/**
 * Model and provider prices in integer micro-dollars. Built once from the defaults and the user's
 * overrides; a bad override throws at start-up naming the entry.
 */
export class PriceBook {
  private readonly logger = new Logger('UsageMonitoring');
  private readonly prices = new Map<string, Price>();
  private readonly warned = new Set<string>();

  constructor(
    defaults: Readonly<Record<string, PriceOverride>>,
    overrides: Readonly<Record<string, PriceOverride>> = {},
    private readonly defaultModels: Readonly<Record<string, string>> = {},
    readonly unknownModels: UnknownModelPolicy = 'default-price',
  ) {
    const raw = new Map<string, PriceOverride>(Object.entries(defaults));
    for (const [name, p] of Object.entries(overrides)) {
      if (p === null || typeof p !== 'object')
        throw new Error(`prices.${name} must be an object of USD prices`);
      for (const key of Object.keys(p)) {
        if (!(FIELDS as readonly string[]).includes(key)) {
          throw new Error(
            `prices.${name}.${key} is not a price field (expected one of ${FIELDS.join(', ')})`,
          );
        }
      }
      raw.set(name, { ...raw.get(name), ...p });
    }
    for (const [name, p] of raw) this.prices.set(name, compile(p, `prices.${name}`));
    for (const [provider, model] of Object.entries(defaultModels)) {
      if (!this.prices.has(model))
        throw new Error(`defaultModels.${provider} names "${model}", which has no price`);
    }
  }

  /** The model to price a provider's request by when the request names none. */
  defaultModel(provider: string): string | undefined {
    return this.defaultModels[provider];
  }

  /**
   * The price-book entry of a model name: exact, else without a `models/` prefix, a `-latest` suffix
   * or a date suffix (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`, `claude-3-5-sonnet-20241022` →
   * `claude-3-5-sonnet`).
   */
  resolve(model: string): string | undefined {
    if (this.prices.has(model)) return model;
    const base = model
      .replace(/^models\//, '')
      .replace(/-latest$/, '')
      .replace(/-(\d{4}-\d{2}-\d{2}|\d{8}|\d{3})$/, '');
    return this.prices.has(base) ? base : undefined;
  }

  /** Whether a request naming this model can be priced by its own entry (no model named: yes). */
  isKnown(model: string | undefined): boolean {
    return model === undefined || this.resolve(model) !== undefined;
  }

  /**
   * Cost of the quantities: token prices by model (else by the unknown-model policy), per-unit prices
   * by model, then by provider. Cache reads, cache writes and reasoning tokens are priced at their own
   * rates where the price book has them. Token cost is rounded up to the micro-dollar.
   */
  price(provider: string, model: string | undefined, q: UsageQuantities): PricedUsage {
    const key = model !== undefined ? this.resolve(model) : undefined;
    const byModel = key !== undefined ? this.prices.get(key) : undefined;
    const fallbackModel = this.defaultModels[provider];
    let tokenPrice = byModel;
    let tokenKey = key;
    if (!tokenPrice && (model === undefined || this.unknownModels !== 'allow-unpriced')) {
      tokenPrice = fallbackModel ? this.prices.get(fallbackModel) : undefined;
      tokenKey = fallbackModel;
    }
    if (model !== undefined && !byModel && (q.inputTokens > 0 || q.outputTokens > 0))
      this.warnOnce(provider, model);
    const unitPrice = byModel ?? this.prices.get(provider) ?? tokenPrice;
    if (!tokenPrice && !unitPrice) return { costMicros: 0 };
    let cost = 0;
    if (tokenPrice) {
      const cached = Math.min(q.cachedInputTokens ?? 0, q.inputTokens);
      const written = Math.min(q.cacheWriteTokens ?? 0, q.inputTokens - cached);
      const reasoning = Math.min(q.reasoningTokens ?? 0, q.outputTokens);
      const perMillion =
        (q.inputTokens - cached - written) * tokenPrice.inputPerMTok +
        cached * tokenPrice.cachedInputPerMTok +
        written * tokenPrice.cacheWritePerMTok +
        (q.outputTokens - reasoning) * tokenPrice.outputPerMTok +
        reasoning * tokenPrice.reasoningPerMTok;
      cost += Math.ceil(perMillion / 1_000_000);
    }
    if (unitPrice) {
      cost +=
        unitPrice.perRequest +
        q.searches * unitPrice.perSearch +
        q.images * unitPrice.perImage +
        q.pages * unitPrice.perPage;
    }
    return { costMicros: cost, pricedAs: tokenPrice ? tokenKey : byModel ? key : provider };
  }

  private warnOnce(provider: string, model: string): void {
    const k = `${provider}\u0001${model}`;
    if (this.warned.has(k) || this.warned.size > 1000) return;
    this.warned.add(k);
    const how =
      this.unknownModels === 'allow-unpriced'
        ? 'its tokens are recorded at no token cost'
        : `it is priced as ${this.defaultModels[provider] ?? 'nothing (no default model)'}`;
    this.logger.warn(
      `model "${escapeForLog(model, 80)}" of ${provider} has no price; ${how}. Add it to the prices option.`,
    );
  }
}

function compile(p: PriceOverride, what: string): Price {
  const micros = (v: number | undefined, f: string) =>
    v === undefined ? undefined : usdToMicros(v, `${what}.${f}`);
  const input = micros(p.inputPerMTok, 'inputPerMTok') ?? 0;
  const output = micros(p.outputPerMTok, 'outputPerMTok') ?? 0;
  return {
    inputPerMTok: input,
    outputPerMTok: output,
    cachedInputPerMTok: micros(p.cachedInputPerMTok, 'cachedInputPerMTok') ?? input,
    cacheWritePerMTok: micros(p.cacheWritePerMTok, 'cacheWritePerMTok') ?? input,
    reasoningPerMTok: micros(p.reasoningPerMTok, 'reasoningPerMTok') ?? output,
    perRequest: micros(p.perRequest, 'perRequest') ?? 0,
    perSearch: micros(p.perSearch, 'perSearch') ?? 0,
    perImage: micros(p.perImage, 'perImage') ?? 0,
    perPage: micros(p.perPage, 'perPage') ?? 0,
  };
}
