import type { PeriodUnit } from './plan.interface';

/** A period instance: `[start, end)` in epoch milliseconds and the key stored on every row. */
export interface PeriodWindow {
  key: string;
  start: number;
  end: number;
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

function daysInMonth(year: number, month: number): number {
  return new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
}

function anchorOf(year: number, month: number, anchorDay: number): number {
  // Normalise months that over- or underflow (month -1, 12) before clamping the day.
  const first = new Date(Date.UTC(year, month, 1));
  const y = first.getUTCFullYear();
  const m = first.getUTCMonth();
  return Date.UTC(y, m, Math.min(anchorDay, daysInMonth(y, m)));
}

function isoDate(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

/**
 * The calendar period (UTC) that contains `now`.
 * Monthly periods start on `anchorDay` (default 1); an anchor past the month's end clamps to its last day,
 * so an anchor on the 31st runs Jan 31 → Feb 28 → Mar 31.
 */
export function periodWindow(unit: PeriodUnit, now: number, anchorDay = 1): PeriodWindow {
  const d = new Date(now);
  const y = d.getUTCFullYear();
  const mo = d.getUTCMonth();
  switch (unit) {
    case 'month': {
      let start = anchorOf(y, mo, anchorDay);
      let end = anchorOf(y, mo + 1, anchorDay);
      if (now < start) {
        end = start;
        start = anchorOf(y, mo - 1, anchorDay);
      }
      return { key: `month:${isoDate(start)}`, start, end };
    }
    case 'day': {
      const start = Date.UTC(y, mo, d.getUTCDate());
      return { key: `day:${isoDate(start)}`, start, end: start + 86_400_000 };
    }
    case 'hour': {
      const start = Date.UTC(y, mo, d.getUTCDate(), d.getUTCHours());
      return {
        key: `hour:${isoDate(start)}T${pad(d.getUTCHours())}`,
        start,
        end: start + 3_600_000,
      };
    }
    case 'minute': {
      const start = Math.floor(now / 60_000) * 60_000;
      return {
        key: `minute:${isoDate(start)}T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`,
        start,
        end: start + 60_000,
      };
    }
  }
}

/**
 * Remembers the last window per unit and anchor so the hot path recomputes dates only when a period rolls.
 */
export class PeriodClock {
  private readonly cache = new Map<string, PeriodWindow>();

  window(unit: PeriodUnit, now: number, anchorDay = 1): PeriodWindow {
    const cacheKey = unit === 'month' ? `month:${anchorDay}` : unit;
    const hit = this.cache.get(cacheKey);
    if (hit && now >= hit.start && now < hit.end) return hit;
    const fresh = periodWindow(unit, now, anchorDay);
    this.cache.set(cacheKey, fresh);
    return fresh;
  }
}
