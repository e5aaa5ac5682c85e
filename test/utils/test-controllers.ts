import {
  Body,
  Controller,
  Get,
  HttpCode,
  HttpException,
  Injectable,
  Post,
  UseGuards,
  UseInterceptors,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import { Metered, MeteringInterceptor, SkipMetering, UsageLimitGuard } from '@app/usage-monitoring';
import { InjectUsageStore } from '@app/usage-monitoring/decorators/inject.decorators';
import type { UsageStore } from '@app/usage-monitoring/storage/usage-store.interface';

/** Test authentication: `Authorization: Bearer <base64url(user id)>` (any id, any character). */
@Injectable()
export class TestAuthGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const req = context
      .switchToHttp()
      .getRequest<{ headers: Record<string, string | undefined>; user?: unknown }>();
    const auth = req.headers.authorization;
    if (auth?.startsWith('Bearer '))
      req.user = { id: Buffer.from(auth.slice(7), 'base64url').toString('utf8') };
    return true;
  }
}

export const bearer = (userId: string) => `Bearer ${Buffer.from(userId, 'utf8').toString('base64url')}`;

/** Binds metering to a test controller: `UsageLimitGuard` + `MeteringInterceptor`. */
export function MeteringBound(): ClassDecorator {
  return (target) => {
    UseGuards(UsageLimitGuard)(target);
    UseInterceptors(MeteringInterceptor)(target);
  };
}

/** What a test request may ask the fake provider to do. */
export interface FakeChatBody {
  /** Echoed in the response, as providers do. */
  model?: string;
  messages?: { role: string; content: string }[];
  max_tokens?: number;
  /** Tokens to report as used; omit `usage` entirely with `omitUsage`. */
  report?: { prompt: number; completion: number };
  omitUsage?: boolean;
  reply?: string;
  fail?: number;
  delayMs?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function chatAnswer(body: FakeChatBody) {
  if (body?.delayMs) await sleep(body.delayMs);
  if (body?.fail) throw new HttpException({ error: 'upstream failed' }, body.fail);
  const reply = body?.reply ?? 'four words of reply';
  return {
    id: 'chatcmpl-test',
    object: 'chat.completion',
    model: body?.model ?? 'gpt-4o-mini',
    choices: [{ index: 0, message: { role: 'assistant', content: reply }, finish_reason: 'stop' }],
    ...(body?.omitUsage
      ? {}
      : {
          usage: {
            prompt_tokens: body?.report?.prompt ?? 10,
            completion_tokens: body?.report?.completion ?? 5,
          },
        }),
  };
}

@Controller('openai/v1')
@MeteringBound()
export class FakeOpenAiController {
  @Post('chat/completions')
  @HttpCode(200)
  @Metered({ provider: 'openai', model: 'gpt-4o-mini' })
  chat(@Body() body: FakeChatBody) {
    return chatAnswer(body);
  }

  @Get('models')
  @SkipMetering()
  models() {
    return { data: [] };
  }
}

@Controller('anthropic/v1')
@MeteringBound()
@Metered({ provider: 'anthropic' })
export class FakeAnthropicController {
  @Post('messages')
  @HttpCode(200)
  messages(@Body() body: { max_tokens?: number }) {
    return {
      id: 'msg-test',
      type: 'message',
      model: 'claude-3.5-sonnet',
      content: [{ type: 'text', text: 'hello' }],
      usage: { input_tokens: 12, output_tokens: Math.min(body?.max_tokens ?? 7, 7) },
    };
  }
}

@Controller('tavily')
@MeteringBound()
@Metered({ provider: 'tavily' })
export class FakeTavilyController {
  @Post('search')
  @HttpCode(200)
  search(@Body() body: { query?: string }) {
    return { query: body?.query ?? '', results: [] };
  }
}

/** No decorator: metered by path detection (`/detect/openai/...` matches the openai pattern). */
@Controller('detect')
@MeteringBound()
export class DetectedController {
  @Post('openai/complete')
  @HttpCode(200)
  complete(@Body() body: FakeChatBody) {
    return chatAnswer(body);
  }

  @Get('plain')
  plain() {
    return { ok: true };
  }

  @Get('settings/gpt-preferences')
  preferences() {
    return { ok: true };
  }
}

/** Exposes the store to tests through the public injection decorator. */
@Injectable()
export class StoreProbe {
  constructor(@InjectUsageStore() readonly store: UsageStore) {}
}

/** Guard only, no interceptor: the reservation must still be given back when the response ends. */
@Controller('guard-only')
@UseGuards(UsageLimitGuard)
@Metered({ provider: 'openai' })
export class GuardOnlyController {
  @Post()
  @HttpCode(200)
  call() {
    return { ok: true };
  }
}

/** A metered route whose path carries a client-chosen id, so a test can find each request's ledger row. */
@Controller('marked')
@MeteringBound()
@Metered({ provider: 'openai', model: 'gpt-4o-mini' })
export class MarkedController {
  @Post(':id')
  @HttpCode(200)
  call(@Body() body: FakeChatBody) {
    return chatAnswer(body);
  }
}
