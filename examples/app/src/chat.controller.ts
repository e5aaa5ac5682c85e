import { Body, Controller, HttpCode, Post, UseGuards, UseInterceptors } from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from 'nestjs-usage-monitoring';
import { openai } from './openai.js';

interface ChatRequest {
  model: string;
  messages: { role: 'user' | 'system' | 'assistant'; content: string }[];
  max_tokens?: number;
}

/** A provider-shaped route: the handler returns the OpenAI SDK's own response, usage included. */
@Controller('v1')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
export class ChatController {
  @Post('chat/completions')
  @HttpCode(200)
  @Metered({ provider: 'openai' })
  chat(@Body() body: ChatRequest) {
    return openai.chat.completions.create({
      model: body.model,
      messages: body.messages,
      max_tokens: body.max_tokens,
    });
  }
}
