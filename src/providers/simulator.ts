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

/** The simulated OpenAI chat completion for a request (what `POST /openai/v1/chat/completions` answers). */
export function simulatedChat(body: {
  model?: string;
  messages?: { role: string; content: unknown }[];
  max_tokens?: number;
  max_completion_tokens?: number;
}) {
  const prompt = textOfMessages(body?.messages);
  const reply = replyTo(prompt, body?.max_completion_tokens ?? body?.max_tokens);
  const promptTokens = tokensOf(prompt);
  return {
    id: idFor('chatcmpl', prompt),
    object: 'chat.completion' as const,
    created: 1_764_201_600,
    model: body?.model ?? 'gpt-4o-mini',
    choices: [{ index: 0, message: { role: 'assistant', content: reply.text }, finish_reason: 'stop' }],
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: reply.tokens,
      total_tokens: promptTokens + reply.tokens,
    },
  };
}

/** The simulated Tavily search answer (what `POST /tavily/search` answers). */
export function simulatedSearch(body: { query?: unknown; max_results?: unknown }) {
  const query = typeof body?.query === 'string' ? body.query : '';
  const n = Math.min(Math.max(Number(body?.max_results) || 3, 1), 10);
  return {
    query,
    answer: null,
    results: Array.from({ length: n }, (_, i) => ({
      title: `Result ${i + 1} for ${query}`.slice(0, 200),
      url: `https://example.com/search/${i + 1}`,
      content: `Simulated search result ${i + 1}.`,
      score: Number((0.9 - i * 0.1).toFixed(2)),
    })),
    response_time: 0.01,
  };
}
