import { createHash } from 'node:crypto';

/**
 * A local stand-in for the providers: realistic response bodies whose usage numbers are a pure
 * function of the request, so the walk-through and tests are repeatable.
 */
export function tokensOf(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

function seed(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32BE(0);
}

export function replyTo(prompt: string, maxTokens: number | undefined): { text: string; tokens: number } {
  const words = [
    'Sure',
    'here',
    'is',
    'a',
    'simulated',
    'answer',
    'about',
    'your',
    'request',
    'with',
    'details',
  ];
  const n = 8 + (seed(prompt) % 24);
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(words[(seed(prompt) + i * 7) % words.length]);
  let text = `${out.join(' ')}.`;
  let tokens = tokensOf(text);
  if (maxTokens !== undefined && maxTokens >= 0 && tokens > maxTokens) {
    text = text.slice(0, maxTokens * 4);
    tokens = maxTokens;
  }
  return { text, tokens };
}

export function textOfMessages(messages: unknown): string {
  if (!Array.isArray(messages)) return '';
  return messages
    .map((m: { content?: unknown }) =>
      typeof m?.content === 'string'
        ? m.content
        : Array.isArray(m?.content)
          ? m.content.map((p: { text?: unknown }) => (typeof p?.text === 'string' ? p.text : '')).join(' ')
          : '',
    )
    .join('\n');
}

export function idFor(prefix: string, text: string): string {
  return `${prefix}-${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
}
