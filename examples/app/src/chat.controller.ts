import { Body, Controller, HttpCode, Post, UseGuards, UseInterceptors } from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from 'nestjs-usage-monitoring';
import OpenAI from 'openai';

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
  private readonly openai = new OpenAI({
    apiKey: process.env.OPENAI_API_KEY ?? 'unused',
    baseURL: process.env.OPENAI_BASE_URL,
    maxRetries: 0,
  });

  @Post('chat/completions')
  @HttpCode(200)
  @Metered({ provider: 'openai' })
  chat(@Body() body: ChatRequest) {
    return this.openai.chat.completions.create({
      model: body.model,
      messages: body.messages,
      max_tokens: body.max_tokens,
    });
  }
}
