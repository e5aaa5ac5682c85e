import { Body, Controller, HttpCode, Post, UseGuards, UseInterceptors } from '@nestjs/common';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { simulatedSearch } from './simulator';

/** Tavily-compatible search: `POST /tavily/search` with `{ query }`. */
@Controller('tavily')
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
@Metered({ provider: 'tavily' })
export class TavilyController {
  @Post('search')
  @HttpCode(200)
  search(@Body() body: { query?: string; max_results?: number }) {
    return simulatedSearch(body);
  }
}
