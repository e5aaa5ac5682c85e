import { Body, Controller, HttpCode, Post, UseGuards, UseInterceptors } from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { idFor, replyTo, textOfMessages, tokensOf } from './simulator';

interface ChatRequest {
  model?: string;
  messages?: { role: string; content: unknown }[];
  max_tokens?: number;
  max_completion_tokens?: number;
}

/** OpenAI-compatible chat completions (SDK base URL `http://localhost:3000/openai/v1`). */
@Controller('openai/v1')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'openai' })
export class OpenAiController {
  @Post('chat/completions')
  @HttpCode(200)
  chat(@Body() body: ChatRequest) {
    const prompt = textOfMessages(body?.messages);
    const reply = replyTo(prompt, body?.max_completion_tokens ?? body?.max_tokens);
    const promptTokens = tokensOf(prompt);
    return {
      id: idFor('chatcmpl', prompt),
      object: 'chat.completion',
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
}
