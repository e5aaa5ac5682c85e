/**
 * Numbers, money and times as the viewer reads them: in their locale (the request's `Accept-Language`,
 * when this runtime knows it, else `en-US`), times in UTC, the time zone every period is counted in.
 */
export class DashboardFormat {
  readonly locale: string;
  private readonly number: Intl.NumberFormat;
  private readonly usd: Intl.NumberFormat;
  private readonly percent: Intl.NumberFormat;
  private readonly time: Intl.DateTimeFormat;
  private readonly day: Intl.DateTimeFormat;
  private readonly clockTime: Intl.DateTimeFormat;

  constructor(acceptLanguage: string | undefined) {
    this.locale = localeOf(acceptLanguage);
    this.number = new Intl.NumberFormat(this.locale, { maximumFractionDigits: 0 });
    this.usd = new Intl.NumberFormat(this.locale, {
      style: 'currency',
      currency: 'USD',
      minimumFractionDigits: 2,
      maximumFractionDigits: 6,
    });
    this.percent = new Intl.NumberFormat(this.locale, { maximumFractionDigits: 2 });
    this.time = new Intl.DateTimeFormat(this.locale, {
      year: 'numeric',
      month: 'short',
      day: 'numeric',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      timeZone: 'UTC',
      timeZoneName: 'short',
    });
    this.day = new Intl.DateTimeFormat(this.locale, { month: 'short', day: 'numeric', timeZone: 'UTC' });
    this.clockTime = new Intl.DateTimeFormat(this.locale, {
      hour: '2-digit',
      minute: '2-digit',
      timeZone: 'UTC',
    });
  }

  /** Calls or tokens. */
  count(n: number): string {
    return this.number.format(n);
  }

  /** US dollars (already converted from micro-dollars). */
  dollars(n: number): string {
    return this.usd.format(n);
  }

  /** A figure of a limit's metric: dollars for `cost`, a count otherwise. */
  figure(metric: string, n: number): string {
    return metric === 'cost' ? this.dollars(n) : this.count(n);
  }

  /** A percentage (0–100+). */
  percentage(n: number): string {
    return `${this.percent.format(n)} %`;
  }

  /** A moment, with its date, time and time zone (UTC). */
  at(ms: number): string {
    return this.time.format(new Date(ms));
  }

  /** A minute of today, as a clock time (UTC). */
  minuteOf(epochMinute: number): string {
    return this.clockTime.format(new Date(epochMinute * 60_000));
  }

  /** A UTC day (epoch day number). */
  dayOf(epochDay: number): string {
    return this.day.format(new Date(epochDay * 86_400_000));
  }
}

/** The first language of an `Accept-Language` header this runtime supports, else `en-US`. */
function localeOf(header: string | undefined): string {
  if (typeof header !== 'string') return 'en-US';
  for (const part of header.split(',').slice(0, 8)) {
    const tag = part.split(';')[0].trim();
    if (!tag || tag === '*' || tag.length > 35) continue;
    try {
      const [supported] = Intl.DateTimeFormat.supportedLocalesOf([tag]);
      if (supported) return supported;
    } catch {
      // not a language tag
    }
  }
  return 'en-US';
}
