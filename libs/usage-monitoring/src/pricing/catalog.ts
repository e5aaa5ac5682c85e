import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { calcPrice, findProvider, type ModelPrice } from '@pydantic/genai-prices';
import { MICROS_PER_USD } from './money';
import type { Price, TokenRates } from './price.interface';

/**
 * Token prices from `@pydantic/genai-prices`, the maintained catalog bundled with this library: model
 * ids matched by the catalog's own rules (dated and aliased ids included), prices in effect at the given
 * time, input / output / cache-read / cache-write rates and long-context tiers. Offline: the bundled data
 * only, never fetched at run time.
 */
export const CATALOG_NAME = 'genai-prices';

/** The bundled catalog's package version, part of every price version it answers. */
export const CATALOG_VERSION: string = (() => {
  try {
    const main = require.resolve('@pydantic/genai-prices');
    const pkg = JSON.parse(readFileSync(join(dirname(main), '..', 'package.json'), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
})();

/** This library's provider names → the catalog's provider ids, where they differ. */
const PROVIDER_IDS: Readonly<Record<string, string>> = { gemini: 'google' };

/** A catalog answer: the catalog's model id and its prices in micro-dollars. */
export interface CatalogPrice {
  id: string;
  price: Price;
}

/**
 * The catalog entry of a model, by provider where the catalog knows the provider, else by the model id
 * alone; `undefined` when the catalog has no price for it.
 */
export function catalogPrice(
  provider: string | undefined,
  model: string,
  at: Date,
): CatalogPrice | undefined {
  const providerId = provider === undefined ? undefined : (PROVIDER_IDS[provider] ?? provider);
  const known = providerId !== undefined && findProvider({ providerId }) !== undefined;
  const found = calcPrice({}, model, { providerId: known ? providerId : undefined, timestamp: at });
  if (!found) return undefined;
  const price = toPrice(found.model_price);
  return price && { id: found.model.id, price };
}

/**
 * The highest rates of any model the catalog prices for a provider at `at` (each rate on its own, tiers
 * included): what a model the catalog does not know yet is charged, so that it is never cheaper than a
 * known one. `undefined` for a provider the catalog does not cover.
 */
export function catalogHighest(provider: string, at: Date): TokenRates | undefined {
  const found = findProvider({ providerId: PROVIDER_IDS[provider] ?? provider });
  if (!found) return undefined;
  let highest: TokenRates | undefined;
  for (const model of found.models) {
    const price = catalogPrice(provider, model.id, at)?.price;
    if (!price) continue;
    for (const rates of [price, ...(price.tiers ?? []).map((t) => t.rates)])
      highest = maxRates(highest, rates);
  }
  return highest;
}

/** Each rate the higher of the two. */
export function maxRates(a: TokenRates | undefined, b: TokenRates): TokenRates {
  if (!a) return { ...b };
  return {
    inputPerMTok: Math.max(a.inputPerMTok, b.inputPerMTok),
    outputPerMTok: Math.max(a.outputPerMTok, b.outputPerMTok),
    cachedInputPerMTok: Math.max(a.cachedInputPerMTok, b.cachedInputPerMTok),
    cacheWritePerMTok: Math.max(a.cacheWritePerMTok, b.cacheWritePerMTok),
    reasoningPerMTok: Math.max(a.reasoningPerMTok, b.reasoningPerMTok),
  };
}

type CatalogValue = ModelPrice[string];

const FIELDS: Readonly<Record<string, keyof TokenRates>> = {
  input_mtok: 'inputPerMTok',
  output_mtok: 'outputPerMTok',
  cache_read_mtok: 'cachedInputPerMTok',
  cache_write_mtok: 'cacheWritePerMTok',
};

/** The catalog's price object → micro-dollars; tiers (by input tokens) become rate sets above a threshold. */
function toPrice(p: ModelPrice): Price | undefined {
  const base = ratesAt(p, -1);
  if (base.inputPerMTok === 0 && base.outputPerMTok === 0) return undefined;
  const starts = new Set<number>();
  for (const v of Object.values(p)) if (isTiered(v)) for (const t of v.tiers) starts.add(t.start);
  const perKiloRequests = typeof p.requests_kcount === 'number' ? p.requests_kcount : 0;
  return {
    ...base,
    perRequest: Math.round((perKiloRequests * MICROS_PER_USD) / 1000),
    perSearch: 0,
    perImage: 0,
    perPage: 0,
    tiers: [...starts].sort((a, b) => b - a).map((above) => ({ above, rates: ratesAt(p, above) })),
  };
}

/** Token rates for a request whose input exceeds `above` tokens (-1: the base rates). */
function ratesAt(p: ModelPrice, above: number): TokenRates {
  const rates: TokenRates = {
    inputPerMTok: 0,
    outputPerMTok: 0,
    cachedInputPerMTok: 0,
    cacheWritePerMTok: 0,
    reasoningPerMTok: 0,
  };
  for (const [key, field] of Object.entries(FIELDS)) rates[field] = micros(valueAt(p[key], above));
  if (p.cache_read_mtok === undefined) rates.cachedInputPerMTok = rates.inputPerMTok;
  if (p.cache_write_mtok === undefined) rates.cacheWritePerMTok = rates.inputPerMTok;
  // The catalog bills reasoning tokens as output tokens.
  rates.reasoningPerMTok = rates.outputPerMTok;
  return rates;
}

function valueAt(v: CatalogValue, above: number): number {
  if (v === undefined) return 0;
  if (typeof v === 'number') return v;
  let price = v.base;
  for (const t of v.tiers) if (above >= t.start) price = t.price;
  return price;
}

function isTiered(v: CatalogValue): v is { base: number; tiers: { start: number; price: number }[] } {
  return typeof v === 'object' && v !== null && Array.isArray((v as { tiers?: unknown }).tiers);
}

const micros = (usd: number) => Math.round(usd * MICROS_PER_USD);
