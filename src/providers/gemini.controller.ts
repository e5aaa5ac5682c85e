import {
  Body,
  Controller,
  HttpCode,
  NotFoundException,
  Param,
  Post,
  UseGuards,
  UseInterceptors,
} from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { replyTo, tokensOf } from './simulator';

interface GenerateContentRequest {
  contents?: { role?: string; parts?: { text?: string }[] }[];
  generationConfig?: { maxOutputTokens?: number };
}

/** Gemini-compatible generateContent (SDK base URL `http://localhost:3000/gemini`). */
@Controller('gemini/v1beta/models')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'gemini' })
export class GeminiController {
  /** `POST /gemini/v1beta/models/{model}:generateContent` */
  @Post(':modelAction')
  @HttpCode(200)
  generate(@Param('modelAction') modelAction: string, @Body() body: GenerateContentRequest) {
    const [model, action] = modelAction.split(':');
    if (action !== 'generateContent' || !model) throw new NotFoundException();
    const prompt = (body?.contents ?? [])
      .flatMap((c) => c?.parts ?? [])
      .map((p) => (typeof p?.text === 'string' ? p.text : ''))
      .join('\n');
    const reply = replyTo(prompt, body?.generationConfig?.maxOutputTokens);
    const promptTokens = tokensOf(prompt);
    return {
      candidates: [
        { content: { role: 'model', parts: [{ text: reply.text }] }, finishReason: 'STOP', index: 0 },
      ],
      usageMetadata: {
        promptTokenCount: promptTokens,
        candidatesTokenCount: reply.tokens,
        totalTokenCount: promptTokens + reply.tokens,
      },
      modelVersion: model,
    };
  }
}
