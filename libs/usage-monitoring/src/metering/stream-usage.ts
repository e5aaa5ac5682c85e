import { isObject } from './text-fields';
import { estimateTokens } from './token-estimator';

/** Text held before it is counted and dropped, so a long stream's memory stays bounded. */
const MAX_BUFFERED_CHARS = 64 * 1024;

/**
 * Folds the events of a streamed provider answer into what its usage adapter reads, and counts the
 * text produced so far for when the stream breaks off:
 * - OpenAI chat completions: `choices[].delta.content`; the final chunk's `usage` when the request set
 *   `stream_options.include_usage` (Mistral streams the same shape);
 * - OpenAI responses API: `response.output_text.delta`, then `response.completed` with `response.usage`;
 * - Anthropic messages: `message_start` (model, input and cache tokens), `content_block_delta` text,
 *   `message_delta` (the final `output_tokens`);
 * - Gemini `streamGenerateContent`: candidates' text parts and the last chunk's `usageMetadata`.
 * An event's `data` may be the parsed object or its JSON text (as proxied from the provider); other
 * text (`[DONE]`, plain text chunks) counts as output text.
 */
export class StreamUsage {
  /** Model named by the stream. */
  model: string | undefined;
  /** The provider's usage so far, in its own shape (`usage` or Gemini's `usageMetadata`). */
  private usage: Record<string, unknown> | undefined;
  private usageMetadata: Record<string, unknown> | undefined;
  /** True once the provider's final usage arrived. */
  final = false;
  /** True once the provider said the stream is complete (`[DONE]`, `message_stop`, `response.completed`). */
  complete = false;
  private buffered: string[] = [];
  private bufferedChars = 0;
  private countedTokens = 0;

  /** Adds one event's data. */
  push(data: unknown): void {
    if (typeof data === 'string') {
      const t = data.trimStart();
      if (t.startsWith('{')) {
        try {
          data = JSON.parse(t) as unknown;
        } catch {
          return this.text(data);
        }
      } else {
        if (t === '[DONE]') this.complete = true;
        else this.text(data);
        return;
      }
    }
    if (!isObject(data)) return;
    switch (data.type) {
      case 'message_stop':
        this.complete = true;
        return;
      case 'message_start':
        if (isObject(data.message)) {
          this.setModel(data.message.model);
          if (isObject(data.message.usage)) this.usage = { ...data.message.usage };
        }
        return;
      case 'content_block_delta':
        if (isObject(data.delta)) this.text(data.delta.text ?? data.delta.thinking);
        return;
      case 'message_delta':
        if (isObject(data.usage)) {
          this.usage = { ...this.usage, ...data.usage };
          this.final = true;
        }
        return;
      case 'response.output_text.delta':
      case 'response.reasoning_summary_text.delta':
        this.text(data.delta);
        return;
      case 'response.completed':
      case 'response.incomplete':
        this.complete = true;
        if (isObject(data.response)) {
          this.setModel(data.response.model);
          if (isObject(data.response.usage)) {
            this.usage = data.response.usage;
            this.final = true;
          }
        }
        return;
    }
    this.setModel(data.model ?? data.modelVersion);
    if (Array.isArray(data.choices)) {
      for (const c of data.choices) if (isObject(c) && isObject(c.delta)) this.text(c.delta.content);
    }
    if (Array.isArray(data.candidates)) {
      for (const c of data.candidates) {
        if (!isObject(c) || !isObject(c.content) || !Array.isArray(c.content.parts)) continue;
        for (const p of c.content.parts) if (isObject(p)) this.text(p.text);
        if (typeof c.finishReason === 'string' && isObject(data.usageMetadata)) this.final = true;
      }
    }
    if (isObject(data.usageMetadata)) this.usageMetadata = data.usageMetadata;
    if (isObject(data.usage)) {
      this.usage = data.usage;
      this.final = true;
    }
  }

  /** A response-shaped object carrying the stream's usage (no text), for the provider's adapter. */
  response(): Record<string, unknown> {
    const r: Record<string, unknown> = {};
    if (this.model !== undefined) r.model = this.model;
    if (this.usage) r.usage = this.usage;
    if (this.usageMetadata) r.usageMetadata = this.usageMetadata;
    return r;
  }

  /** Tokens of the text produced so far, counted with the model's tokenizer (an estimate). */
  producedTokens(): number {
    this.flush();
    return this.countedTokens;
  }

  private text(v: unknown): void {
    if (typeof v !== 'string' || v === '') return;
    this.buffered.push(v);
    this.bufferedChars += v.length;
    if (this.bufferedChars >= MAX_BUFFERED_CHARS) this.flush();
  }

  private flush(): void {
    if (!this.buffered.length) return;
    this.countedTokens += estimateTokens(this.buffered.join(''), this.model);
    this.buffered = [];
    this.bufferedChars = 0;
  }

  private setModel(m: unknown): void {
    if (typeof m === 'string' && this.model === undefined) this.model = m;
  }
}
