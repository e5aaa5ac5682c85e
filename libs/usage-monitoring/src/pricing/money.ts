import { shown } from '../options-validation';

/** Money is integer micro-dollars (1 USD = 1,000,000 µ$): sums never drift. */
export const MICROS_PER_USD = 1_000_000;

/**
 * Converts a USD amount from configuration to micro-dollars.
 * @throws Error when the amount is negative, not finite or finer than a micro-dollar.
 */
export function usdToMicros(usd: number, what: string): number {
  if (typeof usd !== 'number' || !Number.isFinite(usd) || usd < 0) {
    throw new Error(`${what} must be a finite, non-negative number of US dollars (got ${shown(usd)})`);
  }
  const micros = Math.round(usd * MICROS_PER_USD);
  if (Math.abs(usd * MICROS_PER_USD - micros) > 1e-6 * Math.max(1, micros)) {
    throw new Error(`${what} has more than 6 decimals (got ${usd})`);
  }
  if (!Number.isSafeInteger(micros)) {
    throw new Error(`${what} is too large (got ${usd})`);
  }
  return micros;
}

/** Micro-dollars as a JSON number of US dollars with at most 6 decimals. */
export function microsToUsd(micros: number): number {
  return Number((micros / MICROS_PER_USD).toFixed(6));
}

/** Micro-dollars as a fixed 6-decimal string, e.g. `"1.000000"`. */
export function formatUsd(micros: number): string {
  const sign = micros < 0 ? '-' : '';
  const abs = Math.abs(micros);
  const whole = Math.floor(abs / MICROS_PER_USD);
  const frac = String(abs % MICROS_PER_USD).padStart(6, '0');
  return `${sign}${whole}.${frac}`;
}
