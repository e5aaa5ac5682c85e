import { Injectable } from '@nestjs/common';
import { UsageMeter } from 'nestjs-usage-monitoring';
import { openai } from './openai.js';

/** A provider call inside a service: `UsageMeter.run` reserves before it and charges what it used. */
@Injectable()
export class SummaryService {
  constructor(private readonly meter: UsageMeter) {}

  async summarize(userId: string, text: string): Promise<string> {
    const params = {
      model: 'gpt-4o-mini',
      max_tokens: 64,
      messages: [{ role: 'user' as const, content: `Summarize: ${text}` }],
    };
    const completion = await this.meter.run({ userId, provider: 'openai', request: params }, () =>
      openai.chat.completions.create(params),
    );
    return completion.choices[0].message.content ?? '';
  }
}
