import { BadRequestException, Body, Controller, Post, Req, UnauthorizedException } from '@nestjs/common';
import { ArticlesService, type Article } from './articles.service';

/**
 * `POST /articles` with `{ topic }`: two LLM calls and a search, metered inside `ArticlesService` for the
 * authenticated caller. No guard or interceptor here: the service's `UsageMeter` does the enforcing.
 */
@Controller('articles')
export class ArticlesController {
  constructor(private readonly articles: ArticlesService) {}

  @Post()
  write(@Req() req: { user?: { id?: string } }, @Body() body: { topic?: unknown }): Promise<Article> {
    const userId = req.user?.id;
    if (!userId) throw new UnauthorizedException();
    const topic = body?.topic;
    if (typeof topic !== 'string' || topic.trim() === '' || topic.length > 200)
      throw new BadRequestException('topic must be a non-empty string of at most 200 characters');
    return this.articles.write(userId, topic.trim());
  }
}
