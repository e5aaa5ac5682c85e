import type { Logger } from '@nestjs/common';

/**
 * Logs a kind of message at most once per interval, with the count suppressed since, so a failing store
 * cannot flood the log with a line per request.
 */
export class ThrottledLogger {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = 60_000,
  ) {}

  warn(kind: string, message: string, now = Date.now()): void {
    this.emit('warn', kind, message, now);
  }

  error(kind: string, message: string, now = Date.now()): void {
    this.emit('error', kind, message, now);
  }

  private emit(level: 'warn' | 'error', kind: string, message: string, now: number): void {
    const entry = this.last.get(kind);
    if (entry && now - entry.at < this.intervalMs) {
      entry.suppressed++;
      return;
    }
    const suffix = entry?.suppressed ? ` (${entry.suppressed} more since the last report)` : '';
    this.last.set(kind, { at: now, suppressed: 0 });
    this.logger[level](`${message}${suffix}`);
  }
}

/** Escapes control characters in a user-supplied value before it reaches a log line. */
export function escapeForLog(value: string, max = 200): string {
  const cut = value.length > max ? `${value.slice(0, max)}…` : value;
  return JSON.stringify(cut).slice(1, -1);
}
