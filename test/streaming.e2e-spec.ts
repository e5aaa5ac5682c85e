import http from 'node:http';
import { Readable } from 'node:stream';
import {
  Body,
  Controller,
  HttpCode,
  Post,
  Query,
  Sse,
  StreamableFile,
  type MessageEvent,
} from '@nestjs/common';
import { interval, map, take, type Observable } from 'rxjs';
import { Metered } from '@app/usage-monitoring';
import { CATALOG_VERSION } from '@app/usage-monitoring/pricing/catalog';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { bearer, MeteringBound } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore } from './utils/test-store';

/** Events of one streamed Anthropic message: start (25 input tokens), `n` text deltas, the final usage. */
function anthropicEvents(n: number): object[] {
  return [
    {
      type: 'message_start',
      message: {
        id: 'msg_stream',
        type: 'message',
        role: 'assistant',
        model: 'claude-3-5-sonnet-20241022',
        content: [],
        usage: {
          input_tokens: 25,
          cache_read_input_tokens: 0,
          cache_creation_input_tokens: 0,
          output_tokens: 1,
        },
      },
    },
    { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
    ...Array.from({ length: n }, (_, i) => ({
      type: 'content_block_delta',
      index: 0,
      delta: { type: 'text_delta', text: ` word${i}` },
    })),
    { type: 'content_block_stop', index: 0 },
    { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 2 * n } },
    { type: 'message_stop' },
  ];
}

/** OpenAI chat completion chunks; with `include_usage`, a last chunk with empty choices carries the usage. */
function openAiChunks(n: number, includeUsage: boolean): object[] {
  const chunk = (delta: object, finish: string | null = null) => ({
    id: 'chatcmpl-stream',
    object: 'chat.completion.chunk',
    model: 'gpt-4o-mini-2024-07-18',
    choices: [{ index: 0, delta, finish_reason: finish }],
  });
  return [
    chunk({ role: 'assistant', content: '' }),
    ...Array.from({ length: n }, () => chunk({ content: ' token' })),
    chunk({}, 'stop'),
    ...(includeUsage
      ? [
          {
            id: 'chatcmpl-stream',
            object: 'chat.completion.chunk',
            model: 'gpt-4o-mini-2024-07-18',
            choices: [],
            usage: { prompt_tokens: 31, completion_tokens: n, total_tokens: 31 + n },
          },
        ]
      : []),
  ];
}

const TICK_MS = 15;

@Controller('stream')
@MeteringBound()
class StreamController {
  /** `@Sse()` with parsed event objects, as a handler that maps a provider SDK's stream would emit. */
  @Sse('anthropic')
  @Metered({ provider: 'anthropic' })
  anthropic(@Query('n') n = '20'): Observable<MessageEvent> {
    const events = anthropicEvents(Number(n));
    return interval(TICK_MS).pipe(
      take(events.length),
      map((i) => ({ data: events[i] })),
    );
  }

  /** `@Sse()` relaying the provider's raw JSON text (and its `[DONE]`). */
  @Sse('openai')
  @Metered({ provider: 'openai' })
  openai(@Query('n') n = '20', @Query('usage') usage = '1'): Observable<MessageEvent> {
    const events = [...openAiChunks(Number(n), usage === '1').map((c) => JSON.stringify(c)), '[DONE]'];
    return interval(TICK_MS).pipe(
      take(events.length),
      map((i) => ({ data: events[i] })),
    );
  }

  /** A POST proxy piping the provider's event stream back unchanged. */
  @Post('piped')
  @HttpCode(200)
  @Metered({ provider: 'openai' })
  piped(@Body() body: { n?: number; messages?: unknown }): StreamableFile {
    const lines = [...openAiChunks(body.n ?? 20, true).map((c) => JSON.stringify(c)), '[DONE]'];
    async function* sse() {
      for (const line of lines) {
        await new Promise((r) => setTimeout(r, TICK_MS));
        // Split mid-event on purpose: the parser must join chunks.
        const text = `data: ${line}\n\n`;
        yield Buffer.from(text.slice(0, 7));
        yield Buffer.from(text.slice(7));
      }
    }
    return new StreamableFile(Readable.from(sse()), { type: 'text/event-stream' });
  }
}

interface Row {
  input_tokens: number;
  output_tokens: number;
  cost_micros: number;
  estimated: number;
  outcome: string;
  status_code: number;
  model: string;
  price_version: string;
}
const COLUMNS =
  'input_tokens, output_tokens, cost_micros, estimated, outcome, status_code, model, price_version';

/** Opens a stream, counts `data:` events, and (optionally) drops the connection after `abortAfter`. */
function readStream(
  url: string,
  user: string,
  opts: { method?: string; body?: object; abortAfter?: number } = {},
): Promise<{ status: number; events: string[]; aborted: boolean }> {
  return new Promise((resolve, reject) => {
    const payload = opts.body ? JSON.stringify(opts.body) : undefined;
    const req = http.request(
      url,
      {
        method: opts.method ?? 'GET',
        headers: {
          authorization: bearer(user),
          ...(payload
            ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
            : {}),
        },
      },
      (res) => {
        const events: string[] = [];
        let buffer = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buffer += chunk;
          let end: number;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = block
              .split('\n')
              .filter((l) => l.startsWith('data:'))
              .map((l) => l.slice(5).trimStart())
              .join('\n');
            if (data) events.push(data);
            if (opts.abortAfter !== undefined && events.length >= opts.abortAfter) {
              req.destroy();
              resolve({ status: res.statusCode ?? 0, events, aborted: true });
              return;
            }
          }
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, events, aborted: false }));
        res.on('error', () => undefined);
      },
    );
    req.on('error', (e) => (opts.abortAfter !== undefined ? undefined : reject(e)));
    req.end(payload);
  });
}

async function ledgerRow(t: TestApp, user: string): Promise<Row> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const rows = await queryUserDb<Row>(t, user, `SELECT ${COLUMNS} FROM usage_events`).catch(() => []);
    if (rows.length > 1) throw new Error(`${rows.length} ledger rows for one stream`);
    if (rows.length === 1) return rows[0];
    if (Date.now() > deadline) throw new Error(`no ledger row for ${user}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const catalog = `genai-prices@${CATALOG_VERSION}`;

describeStore('streamed responses', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ controllers: [StreamController] });
  });
  afterAll(() => t.close());

  it('@Sse(), full Anthropic stream: exactly the final usage, events passed through unchanged', async () => {
    const res = await readStream(`${t.url}/stream/anthropic?n=20`, 'sse-full');
    expect(res.status).toBe(200);
    expect(res.events.map((e) => JSON.parse(e) as object)).toEqual(anthropicEvents(20));
    // claude-3-5-sonnet: 25 × $3/M + 40 × $15/M = 75 + 600 µ$
    expect(await ledgerRow(t, 'sse-full')).toEqual({
      input_tokens: 25,
      output_tokens: 40,
      cost_micros: 675,
      estimated: 0,
      outcome: 'ok',
      status_code: 200,
      model: 'claude-3-5-sonnet-20241022',
      price_version: `${catalog}:claude-3-5-sonnet`,
    });
  });

  it('@Sse(), client leaves at 30 %: a partial row with the input and the output produced so far', async () => {
    const total = anthropicEvents(20).length; // 25 events
    const res = await readStream(`${t.url}/stream/anthropic?n=20`, 'sse-abort', {
      abortAfter: Math.ceil(total * 0.3),
    });
    expect(res.aborted).toBe(true);
    const row = await ledgerRow(t, 'sse-abort');
    expect(row).toMatchObject({ input_tokens: 25, estimated: 1, outcome: 'partial' });
    // 8 events read: message_start, content_block_start, 6 deltas of " wordN" (2 tokens each with
    // o200k_base); the server may have sent a few more before it saw the close, never the whole 40.
    expect(row.output_tokens).toBeGreaterThanOrEqual(12);
    expect(row.output_tokens).toBeLessThan(40);
    expect(row.cost_micros).toBe(Math.ceil(25 * 3 + row.output_tokens * 15));
  });

  it('@Sse() relaying raw OpenAI chunks with include_usage: exact; without usage: estimated and flagged', async () => {
    const full = await readStream(`${t.url}/stream/openai?n=30&usage=1`, 'sse-openai');
    expect(full.events.at(-1)).toBe('[DONE]');
    // gpt-4o-mini: 31 × $0.15/M + 30 × $0.60/M = 4.65 + 18 → 23 µ$ (rounded up)
    expect(await ledgerRow(t, 'sse-openai')).toMatchObject({
      input_tokens: 31,
      output_tokens: 30,
      cost_micros: 23,
      estimated: 0,
      outcome: 'ok',
      price_version: `${catalog}:gpt-4o-mini`,
    });

    await readStream(`${t.url}/stream/openai?n=30&usage=0`, 'sse-no-usage');
    // No usage in the stream: output counted from the 30 × " token" produced (1 token each), input
    // estimated from a request that has no prompt fields (0).
    expect(await ledgerRow(t, 'sse-no-usage')).toMatchObject({
      input_tokens: 0,
      output_tokens: 30,
      estimated: 1,
      outcome: 'ok',
    });
  });

  it('piped StreamableFile (POST proxy): exact final usage; a client that leaves is charged as partial', async () => {
    const body = { n: 20, messages: [{ role: 'user', content: 'hello there' }] };
    const full = await readStream(`${t.url}/stream/piped`, 'piped-full', { method: 'POST', body });
    expect(full.status).toBe(200);
    expect(full.events).toHaveLength(openAiChunks(20, true).length + 1);
    expect(await ledgerRow(t, 'piped-full')).toMatchObject({
      input_tokens: 31,
      output_tokens: 20,
      estimated: 0,
      outcome: 'ok',
    });

    const cut = await readStream(`${t.url}/stream/piped`, 'piped-abort', {
      method: 'POST',
      body,
      abortAfter: 7,
    });
    expect(cut.aborted).toBe(true);
    const row = await ledgerRow(t, 'piped-abort');
    // Input estimated from the prompt ("hello there": 2 tokens), output from the " token" deltas sent.
    expect(row).toMatchObject({ input_tokens: 2, estimated: 1, outcome: 'partial' });
    expect(row.output_tokens).toBeGreaterThanOrEqual(6);
    expect(row.output_tokens).toBeLessThan(20);
  });
});
