import { Body, Controller, HttpCode, Post, Res, UseGuards, UseInterceptors } from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { idFor, replyTo, textOfMessages, tokensOf } from './simulator';
import { sseFile, wordsOf, type SseEvent, type SseResponse } from './sse';

interface MessagesRequest {
  model?: string;
  system?: string;
  messages?: { role: string; content: unknown }[];
  max_tokens?: number;
  stream?: boolean;
}

/**
 * Anthropic-compatible messages (SDK base URL `http://localhost:3000/anthropic`); with `stream: true`,
 * the messages event stream (`message_start` … `content_block_delta` … `message_delta`, `message_stop`).
 */
@Controller('anthropic/v1')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'anthropic' })
export class AnthropicController {
  @Post('messages')
  @HttpCode(200)
  messages(@Body() body: MessagesRequest, @Res({ passthrough: true }) res: SseResponse) {
    const prompt = [body?.system ?? '', textOfMessages(body?.messages)].join('\n').trim();
    const reply = replyTo(prompt, body?.max_tokens);
    const message = {
      id: idFor('msg', prompt),
      type: 'message',
      role: 'assistant',
      model: body?.model ?? 'claude-3.5-sonnet',
      content: [{ type: 'text', text: reply.text }],
      stop_reason: 'end_turn',
      usage: { input_tokens: tokensOf(prompt), output_tokens: reply.tokens },
    };
    if (body?.stream === true) return sseFile(events(message, reply.text), res);
    return message;
  }
}

/** The events of one streamed message, as the Messages API sends them (without `ping`s). */
function* events(
  message: { content: unknown[]; usage: { input_tokens: number; output_tokens: number } },
  text: string,
): Generator<SseEvent> {
  const { input_tokens, output_tokens } = message.usage;
  const start = {
    ...message,
    content: [],
    stop_reason: null,
    stop_sequence: null,
    usage: { input_tokens, output_tokens: Math.min(1, output_tokens) },
  };
  yield { event: 'message_start', data: { type: 'message_start', message: start } };
  yield {
    event: 'content_block_start',
    data: { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
  };
  for (const word of wordsOf(text)) {
    yield {
      event: 'content_block_delta',
      data: { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: word } },
    };
  }
  yield { event: 'content_block_stop', data: { type: 'content_block_stop', index: 0 } };
  yield {
    event: 'message_delta',
    data: {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { output_tokens },
    },
  };
  yield { event: 'message_stop', data: { type: 'message_stop' } };
}
