import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import OpenAI from 'openai';
import { replyTo, tokensOf } from '../../src/providers/simulator';

/**
 * A local fake upstream for the official OpenAI, Anthropic and Gemini SDKs: plain `node:http` on
 * 127.0.0.1, answering the chat completions, responses, messages and generateContent endpoints,
 * non-streaming and streaming, with usage figures that are a pure function of the request (see
 * {@link fakeFigures}), so tests can assert exact token counts.
 */

export interface FakeRequest {
  method: string;
  /** The request target as sent, query string included (e.g. `...:streamGenerateContent?alt=sse`). */
  path: string;
  /** The parsed JSON body (the raw text when it is not JSON, undefined when empty). */
  body: any;
  headers: Record<string, string | string[] | undefined>;
}

export interface FakeProviders {
  /** e.g. http://127.0.0.1:PORT (no trailing slash) */
  url: string;
  /** Every request received, in order. */
  requests: FakeRequest[];
  /** The next `times` requests (default 1) answer this HTTP status with the provider's error JSON shape. */
  failNext(status: number, times?: number): void;
  /** Delay between streamed chunks in ms (default 2). */
  chunkDelayMs: number;
  close(): Promise<void>;
  /** Ready-made SDK clients pointed at the fake (apiKey 'test', maxRetries 0). */
  openai(): import('openai').default;
  anthropic(): import('@anthropic-ai/sdk').default;
  genai(): import('@google/genai').GoogleGenAI;
}

const MIN_CHUNKS = 8;

/** Splits the reply into words (each after the first keeps its leading space); never fewer than 8 pieces when the text allows. */
function chunksOf(text: string): string[] {
  if (text === '') return [];
  const chunks = text.split(' ').map((w, i) => (i === 0 ? w : ` ${w}`));
  // Only a reply cut short by a small output bound can have fewer than 8 words: split its longest pieces.
  while (chunks.length < MIN_CHUNKS) {
    let longest = 0;
    for (let i = 1; i < chunks.length; i++) if (chunks[i].length > chunks[longest].length) longest = i;
    const piece = chunks[longest];
    if (piece.length < 2) break;
    const half = Math.ceil(piece.length / 2);
    chunks.splice(longest, 1, piece.slice(0, half), piece.slice(half));
  }
  return chunks;
}

/** The figures the fake reports for a prompt text and an output token bound, so tests can compute expectations. */
export function fakeFigures(
  prompt: string,
  maxOutputTokens?: number,
): { inputTokens: number; outputTokens: number; chunks: string[]; text: string } {
  const reply = replyTo(prompt, maxOutputTokens);
  return {
    inputTokens: tokensOf(prompt),
    outputTokens: reply.tokens,
    chunks: chunksOf(reply.text),
    text: reply.text,
  };
}

// ---- prompt text of each request shape -------------------------------------------------------

function textsOf(content: unknown): string[] {
  if (typeof content === 'string') return [content];
  if (!Array.isArray(content)) return [];
  return content.flatMap((p: any) =>
    typeof p === 'string' ? [p] : typeof p?.text === 'string' ? [p.text] : [],
  );
}

function messagesText(messages: unknown): string[] {
  return Array.isArray(messages) ? messages.flatMap((m: any) => textsOf(m?.content)) : [];
}

function chatPrompt(body: any): string {
  return messagesText(body?.messages).join('\n');
}

function responsesPrompt(body: any): string {
  const parts: string[] = typeof body?.instructions === 'string' ? [body.instructions] : [];
  const input = body?.input;
  if (typeof input === 'string') parts.push(input);
  else if (Array.isArray(input))
    for (const item of input)
      parts.push(...(item?.content !== undefined ? textsOf(item.content) : textsOf([item])));
  return parts.join('\n');
}

function anthropicPrompt(body: any): string {
  return [...textsOf(body?.system), ...messagesText(body?.messages)].join('\n');
}

function geminiPrompt(body: any): string {
  const contents: any[] = Array.isArray(body?.contents) ? body.contents : [];
  return contents.flatMap((c) => textsOf(c?.parts)).join('\n');
}

function bound(value: unknown): number | undefined {
  return typeof value === 'number' ? value : undefined;
}

// ---- server ---------------------------------------------------------------------------------

const GEMINI_PATH = /^\/v1(?:beta|alpha)?\/models\/([^/:]+):(generateContent|streamGenerateContent)$/;

const GEMINI_STATUS: Record<number, string> = {
  400: 'INVALID_ARGUMENT',
  401: 'UNAUTHENTICATED',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  409: 'ABORTED',
  429: 'RESOURCE_EXHAUSTED',
  499: 'CANCELLED',
  500: 'INTERNAL',
  501: 'NOT_IMPLEMENTED',
  503: 'UNAVAILABLE',
  504: 'DEADLINE_EXCEEDED',
};

function sendJson(res: ServerResponse, status: number, payload: unknown): void {
  const text = JSON.stringify(payload);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<any> {
  const parts: Buffer[] = [];
  for await (const chunk of req) parts.push(chunk as Buffer);
  const raw = Buffer.concat(parts).toString('utf8');
  if (raw === '') return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** A server-sent event: `event: <name>\ndata: <json>\n\n`, or just the data line when unnamed. */
function sse(data: unknown, event?: string): string {
  const line = `data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;
  return event ? `event: ${event}\n${line}` : line;
}

export async function startFakeProviders(): Promise<FakeProviders> {
  const requests: FakeRequest[] = [];
  const failures: number[] = [];
  const sleepers = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  let seq = 0;
  let closed = false;

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          sleepers.delete(entry);
          resolve();
        }, ms),
        resolve,
      };
      sleepers.add(entry);
    });

  /** Writes the events with `chunkDelayMs` between them; stops as soon as the client goes away. */
  async function stream(res: ServerResponse, events: string[]): Promise<void> {
    let gone = false;
    res.on('close', () => {
      if (!res.writableFinished) gone = true;
    });
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    res.flushHeaders();
    for (let i = 0; i < events.length; i++) {
      if (i > 0) await sleep(fake.chunkDelayMs);
      if (gone || closed || res.destroyed) return;
      res.write(events[i]);
    }
    res.end();
  }

  function fail(res: ServerResponse, status: number, gemini: boolean): void {
    sendJson(
      res,
      status,
      gemini
        ? { error: { code: status, message: 'fake failure', status: GEMINI_STATUS[status] ?? 'UNKNOWN' } }
        : { error: { message: 'fake failure', type: 'server_error' } },
    );
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const target = req.url ?? '/';
    requests.push({ method: req.method ?? 'GET', path: target, body, headers: { ...req.headers } });
    const n = ++seq;
    res.setHeader('x-request-id', `req_fake_${n}`);
    res.setHeader('request-id', `req_fake_${n}`);
    const { pathname } = new URL(target, 'http://127.0.0.1');
    const gemini = GEMINI_PATH.exec(pathname);

    if (failures.length > 0) {
      const status = failures.shift()!;
      return fail(res, status, gemini !== null);
    }
    const notFound = () =>
      sendJson(res, 404, { error: { message: `not found: ${req.method} ${target}`, type: 'not_found' } });
    if (req.method !== 'POST') return notFound();

    if (pathname === '/v1/chat/completions') return chatCompletions(res, body, n);
    if (pathname === '/v1/responses') return responses(res, body, n);
    if (pathname === '/v1/messages') return messages(res, body, n);
    if (gemini) return generateContent(res, body, n, gemini[1], gemini[2] === 'streamGenerateContent');
    return notFound();
  }

  // ---- OpenAI chat completions ----
  async function chatCompletions(res: ServerResponse, body: any, n: number): Promise<void> {
    const f = fakeFigures(chatPrompt(body), bound(body?.max_completion_tokens) ?? bound(body?.max_tokens));
    const id = `chatcmpl-fake${n}`;
    const created = Math.floor(Date.now() / 1000);
    const model = body?.model ?? 'unknown';
    const usage = {
      prompt_tokens: f.inputTokens,
      completion_tokens: f.outputTokens,
      total_tokens: f.inputTokens + f.outputTokens,
    };
    if (!body?.stream) {
      return sendJson(res, 200, {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: f.text, refusal: null, annotations: [] },
            logprobs: null,
            finish_reason: 'stop',
          },
        ],
        usage,
        system_fingerprint: null,
      });
    }
    const includeUsage = body?.stream_options?.include_usage === true;
    const base = { id, object: 'chat.completion.chunk', created, model, system_fingerprint: null };
    const extra = includeUsage ? { usage: null } : {};
    const events = f.chunks.map((content, i) =>
      sse({
        ...base,
        choices: [
          {
            index: 0,
            delta: i === 0 ? { role: 'assistant', content } : { content },
            logprobs: null,
            finish_reason: null,
          },
        ],
        ...extra,
      }),
    );
    events.push(
      sse({ ...base, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }], ...extra }),
    );
    if (includeUsage) events.push(sse({ ...base, choices: [], usage }));
    events.push(sse('[DONE]'));
    return stream(res, events);
  }

  // ---- OpenAI responses ----
  async function responses(res: ServerResponse, body: any, n: number): Promise<void> {
    const f = fakeFigures(responsesPrompt(body), bound(body?.max_output_tokens));
    const id = `resp_fake${n}`;
    const itemId = `msg_fake${n}`;
    const part = { type: 'output_text', text: f.text, annotations: [] };
    const item = { type: 'message', id: itemId, status: 'completed', role: 'assistant', content: [part] };
    const shell = {
      id,
      object: 'response',
      created_at: Math.floor(Date.now() / 1000),
      model: body?.model ?? 'unknown',
      error: null,
      incomplete_details: null,
      instructions: body?.instructions ?? null,
      max_output_tokens: body?.max_output_tokens ?? null,
      metadata: body?.metadata ?? {},
      parallel_tool_calls: true,
      previous_response_id: null,
      temperature: body?.temperature ?? null,
      top_p: body?.top_p ?? null,
      text: { format: { type: 'text' } },
      tool_choice: 'auto',
      tools: [],
    };
    const completed = {
      ...shell,
      status: 'completed',
      output: [item],
      usage: {
        input_tokens: f.inputTokens,
        input_tokens_details: { cached_tokens: 0 },
        output_tokens: f.outputTokens,
        output_tokens_details: { reasoning_tokens: 0 },
        total_tokens: f.inputTokens + f.outputTokens,
      },
    };
    if (!body?.stream) return sendJson(res, 200, completed);

    const inProgress = { ...shell, status: 'in_progress', output: [], usage: null };
    let sequence_number = 0;
    const ev = (type: string, fields: Record<string, unknown>) =>
      sse({ type, ...fields, sequence_number: sequence_number++ }, type);
    const at = { item_id: itemId, output_index: 0, content_index: 0 };
    const events = [
      ev('response.created', { response: inProgress }),
      ev('response.in_progress', { response: inProgress }),
      ev('response.output_item.added', {
        output_index: 0,
        item: { ...item, status: 'in_progress', content: [] },
      }),
      ev('response.content_part.added', { ...at, part: { type: 'output_text', text: '', annotations: [] } }),
      ...f.chunks.map((delta) => ev('response.output_text.delta', { ...at, delta, logprobs: [] })),
      ev('response.output_text.done', { ...at, text: f.text, logprobs: [] }),
      ev('response.content_part.done', { ...at, part }),
      ev('response.output_item.done', { output_index: 0, item }),
      ev('response.completed', { response: completed }),
    ];
    return stream(res, events);
  }

  // ---- Anthropic messages ----
  async function messages(res: ServerResponse, body: any, n: number): Promise<void> {
    const f = fakeFigures(anthropicPrompt(body), bound(body?.max_tokens));
    const message = {
      id: `msg_fake${n}`,
      type: 'message',
      role: 'assistant',
      model: body?.model ?? 'unknown',
      content: [{ type: 'text', text: f.text }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: f.inputTokens, output_tokens: f.outputTokens },
    };
    if (!body?.stream) return sendJson(res, 200, message);

    const ev = (type: string, fields: Record<string, unknown>) => sse({ type, ...fields }, type);
    const events = [
      ev('message_start', {
        message: {
          ...message,
          content: [],
          stop_reason: null,
          usage: { input_tokens: f.inputTokens, output_tokens: 1 },
        },
      }),
      ev('ping', {}),
      ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }),
      ...f.chunks.map((text) => ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text } })),
      ev('content_block_stop', { index: 0 }),
      ev('message_delta', {
        delta: { stop_reason: 'end_turn', stop_sequence: null },
        usage: { output_tokens: f.outputTokens },
      }),
      ev('message_stop', {}),
    ];
    return stream(res, events);
  }

  // ---- Gemini generateContent ----
  async function generateContent(
    res: ServerResponse,
    body: any,
    n: number,
    model: string,
    streaming: boolean,
  ): Promise<void> {
    const f = fakeFigures(geminiPrompt(body), bound(body?.generationConfig?.maxOutputTokens));
    const usageMetadata = {
      promptTokenCount: f.inputTokens,
      candidatesTokenCount: f.outputTokens,
      totalTokenCount: f.inputTokens + f.outputTokens,
    };
    const responseId = `fake${n}`;
    if (!streaming) {
      return sendJson(res, 200, {
        candidates: [
          { content: { role: 'model', parts: [{ text: f.text }] }, finishReason: 'STOP', index: 0 },
        ],
        usageMetadata,
        modelVersion: model,
        responseId,
      });
    }
    const last = f.chunks.length - 1;
    const events = f.chunks.map((text, i) =>
      sse({
        candidates: [
          {
            content: { role: 'model', parts: [{ text }] },
            ...(i === last ? { finishReason: 'STOP' } : {}),
            index: 0,
          },
        ],
        ...(i === last ? { usageMetadata } : {}),
        modelVersion: model,
        responseId,
      }),
    );
    return stream(res, events);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: { message: String(err), type: 'server_error' } });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const fake: FakeProviders = {
    url,
    requests,
    chunkDelayMs: 2,
    failNext(status: number, times = 1) {
      for (let i = 0; i < times; i++) failures.push(status);
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const s of sleepers) {
        clearTimeout(s.timer);
        s.resolve();
      }
      sleepers.clear();
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await done;
    },
    openai: () => new OpenAI({ apiKey: 'test', baseURL: `${url}/v1`, maxRetries: 0 }),
    anthropic: () => new Anthropic({ apiKey: 'test', baseURL: url, maxRetries: 0 }),
    // An explicit fetch: without one the SDK dispatches through Undici's global dispatcher, which Jest's
    // sandboxed global does not carry.
    genai: () =>
      new GoogleGenAI({
        apiKey: 'test',
        vertexai: false,
        httpOptions: { baseUrl: url, fetch: (input, init) => fetch(input, init) },
      }),
  };
  return fake;
}
