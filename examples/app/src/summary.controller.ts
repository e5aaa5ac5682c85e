import { Body, Controller, HttpCode, Post, Req } from '@nestjs/common';
import { SummaryService } from './summary.service.js';

/** An app-shaped route (`{ text }` in, `{ summary }` out) metered inside its service: no guard needed. */
@Controller('v1')
export class SummaryController {
  constructor(private readonly summaries: SummaryService) {}

  @Post('summaries')
  @HttpCode(200)
  async summarize(@Req() request: { user: { id: string } }, @Body() body: { text: string }) {
    return { summary: await this.summaries.summarize(request.user.id, body.text) };
  }
}
