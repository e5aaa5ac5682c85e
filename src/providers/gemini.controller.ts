import {
  BadRequestException,
  Body,
  Controller,
  HttpCode,
  NotFoundException,
  Param,
  Post,
  Query,
  Res,
  UseGuards,
  UseInterceptors,
} from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { replyTo, tokensOf } from './simulator';
import { sseFile, wordsOf, type SseEvent, type SseResponse } from './sse';

interface GenerateContentRequest {
  contents?: { role?: string; parts?: { text?: string }[] }[];
  generationConfig?: { maxOutputTokens?: number };
}

/**
 * Gemini-compatible generateContent and streamGenerateContent (SDK base URL `http://localhost:3000/gemini`).
 * Served under `v1beta` and under `v1`, the version `@google/genai` puts after a custom `baseUrl`.
 */
@Controller(['gemini/v1beta/models', 'gemini/v1/models'])
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'gemini' })
export class GeminiController {
  /**
   * `POST /gemini/v1beta/models/{model}:generateContent`, and
   * `POST /gemini/v1beta/models/{model}:streamGenerateContent?alt=sse` (server-sent events).
   */
  @Post(':modelAction')
  @HttpCode(200)
  generate(
    @Param('modelAction') modelAction: string,
    @Body() body: GenerateContentRequest,
    @Query('alt') alt: unknown,
    @Res({ passthrough: true }) res: SseResponse,
  ) {
    const [model, action] = modelAction.split(':');
    const stream = action === 'streamGenerateContent';
    if ((action !== 'generateContent' && !stream) || !model) throw new NotFoundException();
    if (stream && alt !== 'sse') {
      throw new BadRequestException('streamGenerateContent is simulated with alt=sse only');
    }
    const prompt = (body?.contents ?? [])
      .flatMap((c) => c?.parts ?? [])
      .map((p) => (typeof p?.text === 'string' ? p.text : ''))
      .join('\n');
    const reply = replyTo(prompt, body?.generationConfig?.maxOutputTokens);
    const promptTokens = tokensOf(prompt);
    const usageMetadata = {
      promptTokenCount: promptTokens,
      candidatesTokenCount: reply.tokens,
      totalTokenCount: promptTokens + reply.tokens,
    };
    if (stream) return sseFile(chunks(model, reply.text, usageMetadata), res);
    return {
      candidates: [
        { content: { role: 'model', parts: [{ text: reply.text }] }, finishReason: 'STOP', index: 0 },
      ],
      usageMetadata,
      modelVersion: model,
    };
  }
}

/** One `GenerateContentResponse` per word; the last also carries `finishReason` and `usageMetadata`. */
function* chunks(model: string, text: string, usageMetadata: object): Generator<SseEvent> {
  const words = wordsOf(text);
  if (words.length === 0) words.push('');
  for (let i = 0; i < words.length; i++) {
    const content = { role: 'model', parts: [{ text: words[i] }] };
    const last = i === words.length - 1;
    yield {
      data: last
        ? { candidates: [{ content, finishReason: 'STOP', index: 0 }], usageMetadata, modelVersion: model }
        : { candidates: [{ content, index: 0 }], modelVersion: model },
    };
  }
}
