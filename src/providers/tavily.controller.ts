import { Body, Controller, HttpCode, Post, UseGuards, UseInterceptors } from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';

/** Tavily-compatible search: `POST /tavily/search` with `{ query }`. */
@Controller('tavily')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'tavily' })
export class TavilyController {
  @Post('search')
  @HttpCode(200)
  search(@Body() body: { query?: string; max_results?: number }) {
    const query = typeof body?.query === 'string' ? body.query : '';
    const n = Math.min(Math.max(Number(body?.max_results) || 3, 1), 10);
    return {
      query,
      answer: null,
      results: Array.from({ length: n }, (_, i) => ({
        title: `Result ${i + 1} for ${query}`.slice(0, 200),
        url: `https://example.com/search/${i + 1}`,
        content: `Simulated search result ${i + 1}.`,
        score: Number((0.9 - i * 0.1).toFixed(2)),
      })),
      response_time: 0.01,
    };
  }
}
