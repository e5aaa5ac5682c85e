import {
  Body,
  Controller,
  Headers,
  HttpCode,
  HttpException,
  Post,
  Res,
  UseGuards,
  UseInterceptors,
} from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { idFor, replyTo, simulatedChat, textOfMessages, tokensOf } from './simulator';
import { sseFile, wordsOf, type SseEvent, type SseResponse } from './sse';

interface ChatRequest {
  model?: string;
  messages?: { role: string; content: unknown }[];
  max_tokens?: number;
  max_completion_tokens?: number;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
}

/**
 * OpenAI-compatible chat completions (SDK base URL `http://localhost:3000/openai/v1`); with `stream: true`,
 * `chat.completion.chunk` events (the usage in a last chunk when `stream_options.include_usage` is set).
 * `x-simulate-upstream-status: 500` (any 400–599) answers as a failing provider would: that status and
 * OpenAI's error body (the call is recorded with outcome `error`).
 */
@Controller('openai/v1')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'openai' })
export class OpenAiController {
  @Post('chat/completions')
  @HttpCode(200)
  chat(
    @Body() body: ChatRequest,
    @Res({ passthrough: true }) res: SseResponse,
    @Headers('x-simulate-upstream-status') failWith?: string,
  ) {
    const status = Number(failWith);
    if (Number.isInteger(status) && status >= 400 && status <= 599) {
      throw new HttpException(
        { error: { message: 'Simulated upstream failure', type: 'server_error', code: null } },
        status,
      );
    }
    const prompt = textOfMessages(body?.messages);
    const reply = replyTo(prompt, body?.max_completion_tokens ?? body?.max_tokens);
    const promptTokens = tokensOf(prompt);
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: reply.tokens,
      total_tokens: promptTokens + reply.tokens,
    };
    if (body?.stream === true) {
      const head = {
        id: idFor('chatcmpl', prompt),
        object: 'chat.completion.chunk',
        created: 1_764_201_600,
        model: body.model ?? 'gpt-4o-mini',
      };
      return sseFile(
        chunks(head, reply.text, body.stream_options?.include_usage === true ? usage : null),
        res,
      );
    }
    return simulatedChat(body);
  }
}

/** One chunk per word, the `stop` chunk, the usage chunk (empty `choices`) when asked for, `[DONE]`. */
function* chunks(head: object, text: string, usage: object | null): Generator<SseEvent> {
  let first = true;
  for (const word of wordsOf(text)) {
    const delta = first ? { role: 'assistant', content: word } : { content: word };
    first = false;
    yield { data: { ...head, choices: [{ index: 0, delta, finish_reason: null }] } };
  }
  yield { data: { ...head, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] } };
  if (usage) yield { data: { ...head, choices: [], usage } };
  yield { data: '[DONE]' };
}
