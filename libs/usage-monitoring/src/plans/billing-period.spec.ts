import { PeriodClock, periodWindow } from './billing-period';

const iso = (ms: number) => new Date(ms).toISOString();

describe('periodWindow', () => {
  it('calendar months in UTC', () => {
    const w = periodWindow('month', Date.UTC(2026, 1, 14, 23, 59));
    expect(w.key).toBe('month:2026-02-01');
    expect(iso(w.start)).toBe('2026-02-01T00:00:00.000Z');
    expect(iso(w.end)).toBe('2026-03-01T00:00:00.000Z');
  });

  it('an anchor on the 31st clamps to the month’s last day (leap and common years)', () => {
    expect(periodWindow('month', Date.UTC(2028, 1, 10), 31).key).toBe('month:2028-01-31');
    expect(iso(periodWindow('month', Date.UTC(2028, 1, 10), 31).end)).toBe('2028-02-29T00:00:00.000Z');
    expect(periodWindow('month', Date.UTC(2027, 2, 1), 31).key).toBe('month:2027-02-28');
    expect(iso(periodWindow('month', Date.UTC(2027, 2, 1), 31).end)).toBe('2027-03-31T00:00:00.000Z');
    expect(periodWindow('month', Date.UTC(2027, 2, 31), 31).key).toBe('month:2027-03-31');
  });

  it('before the anchor day the period started last month; across the year boundary too', () => {
    const w = periodWindow('month', Date.UTC(2027, 0, 10), 15);
    expect(w.key).toBe('month:2026-12-15');
    expect(iso(w.end)).toBe('2027-01-15T00:00:00.000Z');
  });

  it('day, hour and minute keys never collide across months or years', () => {
    expect(periodWindow('day', Date.UTC(2026, 10, 27, 13)).key).toBe('day:2026-11-27');
    expect(periodWindow('hour', Date.UTC(2026, 10, 27, 13, 5)).key).toBe('hour:2026-11-27T13');
    expect(periodWindow('minute', Date.UTC(2026, 10, 27, 13, 5, 59)).key).toBe('minute:2026-11-27T13:05');
    expect(periodWindow('day', Date.UTC(2027, 10, 27)).key).not.toBe(
      periodWindow('day', Date.UTC(2026, 10, 27)).key,
    );
  });

  it('every instant lies in [start, end) and consecutive periods touch', () => {
    for (let t = Date.UTC(2026, 0, 1); t < Date.UTC(2028, 0, 1); t += 86_400_000 * 3 + 3_600_000) {
      for (const anchor of [1, 15, 29, 30, 31]) {
        const w = periodWindow('month', t, anchor);
        expect(t >= w.start && t < w.end).toBe(true);
        expect(periodWindow('month', w.end, anchor).start).toBe(w.end);
      }
    }
  });

  it('PeriodClock reuses a window until it ends', () => {
    const clock = new PeriodClock();
    const a = clock.window('hour', Date.UTC(2026, 0, 1, 5, 1));
    expect(clock.window('hour', Date.UTC(2026, 0, 1, 5, 59))).toBe(a);
    expect(clock.window('hour', Date.UTC(2026, 0, 1, 6, 0)).key).toBe('hour:2026-01-01T06');
  });
});
