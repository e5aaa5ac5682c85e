import { StreamableFile } from '@nestjs/common';
import { Readable } from 'node:stream';

/** Pause between two events of a simulated stream, so a client sees them arrive one by one. */
export const SSE_EVENT_DELAY_MS = 5;

/** One server-sent event: `data` is written as is when a string (`[DONE]`), as JSON otherwise. */
export interface SseEvent {
  event?: string;
  data: unknown;
}

/** What the helper needs of the response (Express's, injected with `@Res({ passthrough: true })`). */
export interface SseResponse {
  setHeader(name: string, value: string): unknown;
  once(event: 'close', listener: () => void): unknown;
  readonly destroyed?: boolean;
}

/**
 * A simulated provider stream: the events as `text/event-stream` bytes, one chunk per event, written
 * `delayMs` apart. Returned from a metered handler, the library's `MeteringInterceptor` reads the usage
 * from these bytes as they pass. Writing stops when the client goes away (the response closes), and
 * whenever the stream is destroyed.
 */
export function sseFile(
  events: Iterable<SseEvent>,
  res: SseResponse,
  delayMs = SSE_EVENT_DELAY_MS,
): StreamableFile {
  res.setHeader('Cache-Control', 'no-cache');
  const pending = events[Symbol.iterator]();
  let next = pending.next();
  let timer: NodeJS.Timeout | undefined;
  let first = true;
  const readable = new Readable({
    read() {
      if (timer) return;
      timer = setTimeout(
        () => {
          timer = undefined;
          if (readable.destroyed) return;
          if (next.done) return void readable.push(null);
          const chunk = Buffer.from(formatSse(next.value));
          next = pending.next();
          readable.push(chunk);
          // The body ends with its last event, not a delay later: a client that hangs up as soon as it
          // has read the last event (the OpenAI SDK on `[DONE]`) then finds the stream complete.
          if (next.done) readable.push(null);
        },
        first ? 0 : delayMs,
      );
      first = false;
    },
    destroy(error, callback) {
      clearTimeout(timer);
      timer = undefined;
      callback(error);
    },
  });
  if (res.destroyed) readable.destroy();
  else res.once('close', () => readable.destroy());
  return new StreamableFile(readable, { type: 'text/event-stream' });
}

/** `event: <name>` (when named) and `data: <payload>`, then the blank line that ends the event. */
export function formatSse({ event, data }: SseEvent): string {
  const payload = typeof data === 'string' ? data : JSON.stringify(data);
  return `${event ? `event: ${event}\n` : ''}data: ${payload}\n\n`;
}

/**
 * The reply cut into words, each but the first with the space before it, so that the pieces joined
 * give the text back exactly (none for an empty reply).
 */
export function wordsOf(text: string): string[] {
  return text.split(/(?= )/).filter((w) => w !== '');
}
