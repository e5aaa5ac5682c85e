import { StreamUsage } from './stream-usage';

/** How a streamed result ended. */
export type StreamEnd = 'ok' | 'partial' | 'error';

/** Told once of the end, with the usage folded from the stream's chunks. */
export type OnStreamEnd = (how: StreamEnd, usage: StreamUsage, error?: unknown) => void;

/** Folds each chunk into the stream's usage, and reports the end once it comes. */
interface StreamTracker {
  readonly usage: StreamUsage;
  end(how: StreamEnd, error?: unknown): void;
}

type Listener = (...args: unknown[]) => void;

interface Emitting {
  on(event: string, listener: Listener): unknown;
}

interface IteratorBacked {
  iterator: () => AsyncIterator<unknown>;
  controller?: { signal?: { aborted?: boolean } };
}

const isFunction = (v: unknown): v is (...args: unknown[]) => unknown => typeof v === 'function';

/**
 * Meters a streamed provider result and returns it so that the caller uses it exactly as without the meter:
 * - an SDK event runner (`@anthropic-ai/sdk` `MessageStream`, `openai` `ChatCompletionStream`): its own
 *   events are listened to, the object is returned as it is;
 * - an SDK `Stream` (`openai`, `@anthropic-ai/sdk`: an async iterable with an `iterator` factory and an
 *   `AbortController`): the factory is wrapped, so that iteration, `tee()` and `toReadableStream()` are all
 *   seen; the object keeps its class and methods;
 * - any other async iterable (`@google/genai`'s stream is an async generator): wrapped in an async generator
 *   that yields the same chunks.
 * Returns `undefined` for anything that is not a stream.
 */
export function meterStream<T>(result: T, onEnd: OnStreamEnd): T | undefined {
  if (typeof result !== 'object' || result === null) return undefined;
  const r = result as Record<PropertyKey, unknown>;
  const isRunner = isFunction(r.on) && (isFunction(r.finalMessage) || isFunction(r.finalChatCompletion));
  if (!isRunner && !isFunction(r[Symbol.asyncIterator])) return undefined;
  const usage = new StreamUsage();
  const tracker: StreamTracker = { usage, end: (how, error) => onEnd(how, usage, error) };
  if (isRunner) {
    trackRunner(r as unknown as Emitting, tracker, isFunction(r.finalMessage) ? 'streamEvent' : 'chunk');
    return result;
  }
  if (isFunction(r.iterator) && typeof r.controller === 'object' && r.controller !== null) {
    const stream = r as unknown as IteratorBacked;
    const original = stream.iterator.bind(stream);
    stream.iterator = () =>
      trackIterator(original(), tracker, () => stream.controller?.signal?.aborted === true);
    return result;
  }
  const source = r as unknown as AsyncIterable<unknown>;
  return wrapGenerator(source, tracker) as T;
}

function trackRunner(runner: Emitting, tracker: StreamTracker, chunkEvent: string): void {
  runner.on(chunkEvent, (chunk: unknown) => tracker.usage.push(chunk));
  runner.on('abort', () => tracker.end('partial'));
  runner.on('error', (e: unknown) => tracker.end('error', e));
  runner.on('end', () => tracker.end('ok'));
}

/** An iterator that reports each chunk and its end; `return()` before the end (a `break`) is `partial`. */
function trackIterator(
  inner: AsyncIterator<unknown>,
  tracker: StreamTracker,
  aborted: () => boolean,
): AsyncIterator<unknown> & AsyncIterable<unknown> {
  const it: AsyncIterator<unknown> & AsyncIterable<unknown> = {
    next: async (...args: [] | [unknown]) => {
      let step: IteratorResult<unknown>;
      try {
        step = await inner.next(...args);
      } catch (e) {
        tracker.end(aborted() ? 'partial' : 'error', e);
        throw e;
      }
      if (step.done) tracker.end(aborted() ? 'partial' : 'ok');
      else tracker.usage.push(step.value);
      return step;
    },
    return: async (value?: unknown) => {
      tracker.end('partial');
      return inner.return ? inner.return(value) : { done: true, value };
    },
    [Symbol.asyncIterator]() {
      return it;
    },
  };
  if (inner.throw) {
    const innerThrow = inner.throw.bind(inner);
    it.throw = async (e?: unknown) => {
      tracker.end('error', e);
      return innerThrow(e);
    };
  }
  return it;
}

async function* wrapGenerator(
  source: AsyncIterable<unknown>,
  tracker: StreamTracker,
): AsyncGenerator<unknown> {
  const inner = source[Symbol.asyncIterator]();
  let finished = false;
  try {
    for (;;) {
      let step: IteratorResult<unknown>;
      try {
        step = await inner.next();
      } catch (e) {
        finished = true;
        tracker.end('error', e);
        throw e;
      }
      if (step.done) {
        finished = true;
        tracker.end('ok');
        return step.value;
      }
      tracker.usage.push(step.value);
      yield step.value;
    }
  } finally {
    if (!finished) {
      // The consumer stopped early (`break`, `return()`): close the source, charge what was produced.
      tracker.end('partial');
      await inner.return?.();
    }
  }
}
