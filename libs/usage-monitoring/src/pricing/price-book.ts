import type { Price, PriceOverride, UsageQuantities } from './price.interface';
import { usdToMicros } from './money';

const FIELDS = [
  'inputPerMTok',
  'outputPerMTok',
  'perRequest',
  'perSearch',
  'perImage',
  'perPage',
] as const satisfies readonly (keyof Price)[];

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
  private readonly prices = new Map<string, Price>();

  constructor(
    defaults: Readonly<Record<string, PriceOverride>>,
    overrides: Readonly<Record<string, PriceOverride>> = {},
    private readonly defaultModels: Readonly<Record<string, string>> = {},
  ) {
    for (const [name, p] of Object.entries(defaults)) this.prices.set(name, compile(p, `prices.${name}`));
    for (const [name, p] of Object.entries(overrides)) {
      if (p === null || typeof p !== 'object') {
        throw new Error(`prices.${name} must be an object of USD prices`);
      }
      for (const key of Object.keys(p)) {
        if (!(FIELDS as readonly string[]).includes(key)) {
          throw new Error(
            `prices.${name}.${key} is not a price field (expected one of ${FIELDS.join(', ')})`,
          );
        }
      }
      this.prices.set(name, compile({ ...this.prices.get(name), ...p }, `prices.${name}`));
    }
  }

  /** The model to price a provider's request by when the request names none. */
  defaultModel(provider: string): string | undefined {
    return this.defaultModels[provider];
  }

  /**
   * Cost of the quantities: token prices by model (else the provider's default model), per-unit prices
   * by model, then by provider. Token cost is rounded up to the micro-dollar.
   */
  price(provider: string, model: string | undefined, q: UsageQuantities): PricedUsage {
    const byModel = model !== undefined ? this.prices.get(model) : undefined;
    const fallbackModel = this.defaultModels[provider];
    const tokenPrice = byModel ?? (fallbackModel ? this.prices.get(fallbackModel) : undefined);
    const unitPrice = byModel ?? this.prices.get(provider) ?? tokenPrice;
    if (!tokenPrice && !unitPrice) return { costMicros: 0 };
    let cost = 0;
    if (tokenPrice) {
      const perMillion = q.inputTokens * tokenPrice.inputPerMTok + q.outputTokens * tokenPrice.outputPerMTok;
      cost += Math.ceil(perMillion / 1_000_000);
    }
    if (unitPrice) {
      cost +=
        unitPrice.perRequest +
        q.searches * unitPrice.perSearch +
        q.images * unitPrice.perImage +
        q.pages * unitPrice.perPage;
    }
    const pricedAs = byModel ? model : tokenPrice ? fallbackModel : provider;
    return { costMicros: cost, pricedAs };
  }
}

function compile(p: PriceOverride, what: string): Price {
  const out = {} as Price;
  for (const f of FIELDS) out[f] = p[f] === undefined ? 0 : usdToMicros(p[f], `${what}.${f}`);
  return out;
}
