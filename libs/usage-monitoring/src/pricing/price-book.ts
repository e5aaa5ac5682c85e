import { createHash } from 'node:crypto';
import { Logger } from '@nestjs/common';
import { escapeForLog } from '../enforcement/throttled-logger';
import { DEFAULT_PRICES } from './default-prices';
import { CATALOG_NAME, CATALOG_VERSION, catalogHighest, catalogPrice, maxRates } from './catalog';
import type { Price, PriceOverride, TokenRates, UsageQuantities } from './price.interface';
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
] as const satisfies readonly (keyof PriceOverride)[];

const TOKEN_FIELDS: readonly string[] = [
  'inputPerMTok',
  'outputPerMTok',
  'cachedInputPerMTok',
  'cacheWritePerMTok',
  'reasoningPerMTok',
];

/** Entries kept by the lookup cache before it starts over; cleared hourly too (catalog prices by date). */
const CACHE_MAX = 4096;
const CACHE_TTL_MS = 3_600_000;

/**
 * What to do with a model the price book does not know (a model released after the bundled catalog):
 * - `highest-price`: price it at the highest rates of any known model of its provider, so that it is
 *   never cheaper than a known one (a warning once per model; the ledger's price version says so);
 * - `allow-unpriced`: record its tokens at no token cost (a warning once per model);
 * - `deny`: refuse requests that name it (400 `USAGE_UNKNOWN_MODEL`) before they reach the provider;
 *   a response that names one is priced as `highest-price`.
 */
export type UnknownModelPolicy = 'highest-price' | 'deny' | 'allow-unpriced';

export const UNKNOWN_MODEL_POLICIES: readonly UnknownModelPolicy[] = [
  'highest-price',
  'deny',
  'allow-unpriced',
];

/** What the price book answers for one request. */
export interface PricedUsage {
  costMicros: number;
  /** The model or provider whose price applied; `undefined` when none did (cost 0). */
  pricedAs?: string;
  /**
   * Where that price came from, stored on the ledger row: `genai-prices@<version>:<model>` (the catalog),
   * `options:<hash of the prices option>:<name>` (an override), `builtin:<name>` (this library's table) or
   * `highest:<provider>:<sources>` (a model nobody prices, at its provider's highest known rates).
   */
  priceVersion?: string;
}

export interface PriceBookOptions {
  /** Use the bundled `@pydantic/genai-prices` catalog for token prices. @default true */
  catalog?: boolean;
  /** Per-unit prices of the providers the catalog does not cover. @default DEFAULT_PRICES */
  builtin?: Readonly<Record<string, PriceOverride>>;
  overrides?: Readonly<Record<string, PriceOverride>>;
  defaultModels?: Readonly<Record<string, string>>;
  unknownModels?: UnknownModelPolicy;
}

interface Entry {
  key: string;
  price: Price;
  /** `source:key`, see {@link PricedUsage.priceVersion}. */
  version: string;
}

/**
 * Model and provider prices in integer micro-dollars. A name resolves, in order, to the `prices` option
 * (merged over the catalog's or the built-in entry of the same name), the catalog, then the built-in
 * table; each of them tried with the id as given, then without a `models/` prefix, `-latest` suffix or
 * date suffix. A bad override throws at start-up naming the entry.
 */
export class PriceBook {
  private readonly logger = new Logger('UsageMonitoring');
  private readonly overrides = new Map<string, Entry>();
  private readonly builtin = new Map<string, Entry>();
  private readonly useCatalog: boolean;
  private readonly defaultModels: Readonly<Record<string, string>>;
  readonly unknownModels: UnknownModelPolicy;
  private readonly cache = new Map<string, Entry | null>();
  private cacheUntil = 0;
  private readonly warned = new Set<string>();
  private readonly highest = new Map<string, Entry | null>();

  constructor(options: PriceBookOptions = {}) {
    this.useCatalog = options.catalog ?? true;
    this.defaultModels = options.defaultModels ?? {};
    this.unknownModels = options.unknownModels ?? 'highest-price';
    for (const [name, p] of Object.entries(options.builtin ?? DEFAULT_PRICES)) {
      this.builtin.set(name, {
        key: name,
        price: compile(p, `builtin price ${name}`),
        version: `builtin:${name}`,
      });
    }
    const overrides = options.overrides ?? {};
    const hash = createHash('sha256').update(JSON.stringify(overrides)).digest('hex').slice(0, 8);
    const now = new Date();
    for (const [name, p] of Object.entries(overrides)) {
      if (p === null || typeof p !== 'object' || Array.isArray(p))
        throw new Error(`prices.${name} must be an object of USD prices`);
      for (const key of Object.keys(p)) {
        if (!(FIELDS as readonly string[]).includes(key)) {
          throw new Error(
            `prices.${name}.${key} is not a price field (expected one of ${FIELDS.join(', ')})`,
          );
        }
      }
      const base =
        this.builtin.get(name)?.price ??
        (this.useCatalog ? catalogPrice(undefined, name, now)?.price : undefined);
      this.overrides.set(name, {
        key: name,
        price: overlay(base, p, `prices.${name}`),
        version: `options:${hash}:${name}`,
      });
    }
    for (const [provider, model] of Object.entries(this.defaultModels)) {
      if (!this.lookup(provider, model))
        throw new Error(`defaultModels.${provider} names "${model}", which has no price`);
    }
  }

  /** The model to price a provider's request by when the request names none. */
  defaultModel(provider: string): string | undefined {
    return this.defaultModels[provider];
  }

  /** Whether a request naming this model can be priced by its own entry (no model named: yes). */
  isKnown(provider: string, model: string | undefined): boolean {
    return model === undefined || this.lookup(provider, model) !== undefined;
  }

  /**
   * Cost of the quantities: token prices by model (else by the unknown-model policy), per-unit prices
   * by model, then by provider. Cache reads, cache writes and reasoning tokens are priced at their own
   * rates where the price book has them; long-context tiers by the request's input tokens. Token cost is
   * rounded up to the micro-dollar.
   */
  price(provider: string, model: string | undefined, q: UsageQuantities): PricedUsage {
    const byModel = model !== undefined ? this.lookup(provider, model) : undefined;
    let token = byModel;
    if (!token && model === undefined) {
      const fallback = this.defaultModels[provider];
      token = fallback !== undefined ? this.lookup(provider, fallback) : undefined;
    } else if (!token && this.unknownModels !== 'allow-unpriced') {
      token = this.highestOf(provider);
    }
    if (model !== undefined && !byModel && (q.inputTokens > 0 || q.outputTokens > 0))
      this.warnOnce(provider, model);
    const unit = byModel ?? this.lookup(provider, provider) ?? token;
    if (!token && !unit) return { costMicros: 0 };
    let cost = 0;
    if (token) {
      const rates = ratesFor(token.price, q.inputTokens);
      const cached = Math.min(q.cachedInputTokens ?? 0, q.inputTokens);
      const written = Math.min(q.cacheWriteTokens ?? 0, q.inputTokens - cached);
      const reasoning = Math.min(q.reasoningTokens ?? 0, q.outputTokens);
      const perMillion =
        (q.inputTokens - cached - written) * rates.inputPerMTok +
        cached * rates.cachedInputPerMTok +
        written * rates.cacheWritePerMTok +
        (q.outputTokens - reasoning) * rates.outputPerMTok +
        reasoning * rates.reasoningPerMTok;
      cost += Math.ceil(perMillion / 1_000_000);
    }
    if (unit) {
      const p = unit.price;
      cost += p.perRequest + q.searches * p.perSearch + q.images * p.perImage + q.pages * p.perPage;
    }
    const applied = token ?? unit!;
    return { costMicros: cost, pricedAs: applied.key, priceVersion: applied.version };
  }

  /**
   * The highest rates of the provider's known models: the catalog's (per rate, tiers included) and the
   * provider's default model; with the catalog off, the `prices` option's token entries instead (their
   * provider is not known, so all of them count). Computed once per provider and catalog hour.
   */
  private highestOf(provider: string): Entry | undefined {
    this.expireCaches(Date.now());
    let hit = this.highest.get(provider);
    if (hit === undefined) {
      const sources: Entry[] = [];
      const fallback = this.defaultModels[provider];
      const defaultEntry = fallback !== undefined ? this.lookup(provider, fallback) : undefined;
      if (defaultEntry) sources.push(defaultEntry);
      if (!this.useCatalog)
        for (const o of this.overrides.values())
          if (o.price.inputPerMTok || o.price.outputPerMTok) sources.push(o);
      let rates = this.useCatalog ? catalogHighest(provider, new Date()) : undefined;
      for (const e of sources) {
        rates = maxRates(rates, e.price);
        for (const t of e.price.tiers ?? []) rates = maxRates(rates, t.rates);
      }
      const source = this.useCatalog ? `${CATALOG_NAME}@${CATALOG_VERSION}` : 'options';
      hit = rates
        ? {
            key: `highest:${provider}`,
            price: { ...rates, perRequest: 0, perSearch: 0, perImage: 0, perPage: 0 },
            version: `highest:${provider}:${source}`,
          }
        : null;
      this.highest.set(provider, hit);
    }
    return hit ?? undefined;
  }

  /** The entry of a name, cached (the catalog's matching is a scan of its rules). */
  private lookup(provider: string, name: string): Entry | undefined {
    const now = Date.now();
    this.expireCaches(now);
    const k = `${provider}\u0001${name}`;
    let entry = this.cache.get(k);
    if (entry === undefined) {
      entry = this.find(provider, name, new Date(now)) ?? null;
      this.cache.set(k, entry);
    }
    return entry ?? undefined;
  }

  /** Catalog prices change on dates: answers are kept for an hour at most. */
  private expireCaches(now: number): void {
    if (now < this.cacheUntil && this.cache.size < CACHE_MAX) return;
    this.cache.clear();
    this.highest.clear();
    this.cacheUntil = now + CACHE_TTL_MS;
  }

  private find(provider: string, name: string, at: Date): Entry | undefined {
    const base = name
      .replace(/^models\//, '')
      .replace(/-latest$/, '')
      .replace(/-(\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4})$/, '');
    const candidates = base === name ? [name] : [name, base];
    for (const c of candidates) {
      const o = this.overrides.get(c);
      if (o) return o;
    }
    if (this.useCatalog && name !== provider) {
      for (const c of candidates) {
        const found = catalogPrice(provider, c, at);
        if (found) {
          return {
            key: found.id,
            price: found.price,
            version: `${CATALOG_NAME}@${CATALOG_VERSION}:${found.id}`,
          };
        }
      }
    }
    for (const c of candidates) {
      const b = this.builtin.get(c);
      if (b) return b;
    }
    return undefined;
  }

  private warnOnce(provider: string, model: string): void {
    const k = `${provider}\u0001${model}`;
    if (this.warned.has(k) || this.warned.size > 1000) return;
    this.warned.add(k);
    const highest = this.highestOf(provider)?.price;
    const how =
      this.unknownModels === 'allow-unpriced'
        ? 'its tokens are recorded at no token cost'
        : highest
          ? `it is priced at the highest rates of ${provider}'s known models ($${highest.inputPerMTok / 1e6} in / $${highest.outputPerMTok / 1e6} out per million tokens)`
          : 'it has no token price (nothing is known of its provider)';
    this.logger.warn(
      `model "${escapeForLog(model, 80)}" of ${provider} has no price; ${how}. Add it to the prices option.`,
    );
  }
}

function ratesFor(price: Price, inputTokens: number): TokenRates {
  if (price.tiers) for (const t of price.tiers) if (inputTokens > t.above) return t.rates;
  return price;
}

/** Override fields (USD) over a base price (micro-dollars); token overrides drop the base's tiers. */
function overlay(base: Price | undefined, p: PriceOverride, what: string): Price {
  if (!base) return compile(p, what);
  const micros = (f: keyof PriceOverride) =>
    p[f] === undefined ? undefined : usdToMicros(p[f], `${what}.${f}`);
  const input = micros('inputPerMTok') ?? base.inputPerMTok;
  const output = micros('outputPerMTok') ?? base.outputPerMTok;
  const touchesTokens = Object.keys(p).some((k) => TOKEN_FIELDS.includes(k));
  return {
    inputPerMTok: input,
    outputPerMTok: output,
    cachedInputPerMTok:
      micros('cachedInputPerMTok') ?? (p.inputPerMTok !== undefined ? input : base.cachedInputPerMTok),
    cacheWritePerMTok:
      micros('cacheWritePerMTok') ?? (p.inputPerMTok !== undefined ? input : base.cacheWritePerMTok),
    reasoningPerMTok:
      micros('reasoningPerMTok') ?? (p.outputPerMTok !== undefined ? output : base.reasoningPerMTok),
    perRequest: micros('perRequest') ?? base.perRequest,
    perSearch: micros('perSearch') ?? base.perSearch,
    perImage: micros('perImage') ?? base.perImage,
    perPage: micros('perPage') ?? base.perPage,
    tiers: touchesTokens ? undefined : base.tiers,
  };
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
