import { Body, Controller, HttpCode, Post, UseGuards, UseInterceptors } from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { idFor, replyTo, textOfMessages, tokensOf } from './simulator';

interface MessagesRequest {
  model?: string;
  system?: string;
  messages?: { role: string; content: unknown }[];
  max_tokens?: number;
}

/** Anthropic-compatible messages (SDK base URL `http://localhost:3000/anthropic`). */
@Controller('anthropic/v1')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'anthropic' })
export class AnthropicController {
  @Post('messages')
  @HttpCode(200)
  messages(@Body() body: MessagesRequest) {
    const prompt = [body?.system ?? '', textOfMessages(body?.messages)].join('\n').trim();
    const reply = replyTo(prompt, body?.max_tokens);
    return {
      id: idFor('msg', prompt),
      type: 'message',
      role: 'assistant',
      model: body?.model ?? 'claude-3.5-sonnet',
      content: [{ type: 'text', text: reply.text }],
      stop_reason: 'end_turn',
      usage: { input_tokens: tokensOf(prompt), output_tokens: reply.tokens },
    };
  }
}
