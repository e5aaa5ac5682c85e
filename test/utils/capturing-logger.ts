import type { LoggerService } from '@nestjs/common';

/** Collects every line Nest and the library log, as it would reach a terminal or a log shipper. */
export class CapturingLogger implements LoggerService {
  readonly lines: string[] = [];
  private add =
    (level: string) =>
    (message: unknown, ...rest: unknown[]) => {
      this.lines.push(
        `${level} ${[message, ...rest].map((m) => (typeof m === 'string' ? m : m instanceof Error ? m.message : JSON.stringify(m))).join(' ')}`,
      );
    };
  log = this.add('LOG');
  error = this.add('ERROR');
  warn = this.add('WARN');
  debug = this.add('DEBUG');
  verbose = this.add('VERBOSE');
}
