import { Injectable } from '@nestjs/common';
import { UsageMeter } from '@app/usage-monitoring';
import { simulatedChat, simulatedSearch } from '../providers/simulator';

/** What `POST /articles` answers: the app's own shape, not a provider's. */
export interface Article {
  topic: string;
  outline: string;
  sources: string[];
  article: string;
}

/**
 * A multi-step flow metered inside a service, as the system this library replaces metered: each provider call
 * goes through `UsageMeter.run`, which reserves it against the caller's plan before it runs (429 when over a
 * limit) and charges what the provider reports. The providers are the demo's simulated ones, called in process
 * the way an SDK client would be called.
 */
@Injectable()
export class ArticlesService {
  constructor(private readonly meter: UsageMeter) {}

  async write(userId: string, topic: string): Promise<Article> {
    const outlineRequest = {
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: `Outline a short article about ${topic}.` }],
      max_tokens: 200,
    };
    const outline = await this.meter.run({ userId, provider: 'openai', request: outlineRequest }, () =>
      Promise.resolve(simulatedChat(outlineRequest)),
    );
    const searchRequest = { query: topic, max_results: 3 };
    const search = await this.meter.run({ userId, provider: 'tavily', request: searchRequest }, () =>
      Promise.resolve(simulatedSearch(searchRequest)),
    );
    const outlineText = outline.choices[0].message.content;
    const draftRequest = {
      model: 'gpt-4o-mini',
      messages: [
        { role: 'system', content: 'Write the article from the outline and sources.' },
        { role: 'user', content: `${outlineText}\n${search.results.map((r) => r.content).join('\n')}` },
      ],
      max_tokens: 800,
    };
    const draft = await this.meter.run({ userId, provider: 'openai', request: draftRequest }, () =>
      Promise.resolve(simulatedChat(draftRequest)),
    );
    return {
      topic,
      outline: outlineText,
      sources: search.results.map((r) => r.url),
      article: draft.choices[0].message.content,
    };
  }
}
