import { UsageExtractor } from './usage-extractor';

describe('UsageExtractor', () => {
  const x = new UsageExtractor(1024);

  it.each([
    [
      'openai chat',
      'openai',
      { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] },
      { model: 'gpt-4o-2024-08-06', usage: { prompt_tokens: 11, completion_tokens: 22 }, choices: [] },
      { model: 'gpt-4o-2024-08-06', inputTokens: 11, outputTokens: 22, estimated: false },
    ],
    [
      'openai responses',
      'openai',
      { model: 'gpt-4o', input: 'hi' },
      { model: 'gpt-4o', usage: { input_tokens: 5, output_tokens: 7 }, output_text: 'yo' },
      { model: 'gpt-4o', inputTokens: 5, outputTokens: 7, estimated: false },
    ],
    [
      'anthropic',
      'anthropic',
      { model: 'claude-3.5-sonnet', messages: [] },
      {
        model: 'claude-3.5-sonnet',
        usage: { input_tokens: 100, output_tokens: 50 },
        content: [{ type: 'text', text: 'x' }],
      },
      { model: 'claude-3.5-sonnet', inputTokens: 100, outputTokens: 50, estimated: false },
    ],
    [
      'gemini',
      'gemini',
      { contents: [{ parts: [{ text: 'hi' }] }] },
      { usageMetadata: { promptTokenCount: 3, candidatesTokenCount: 9 }, modelVersion: 'gemini-2.5-flash' },
      { model: 'gemini-2.5-flash', inputTokens: 3, outputTokens: 9, estimated: false },
    ],
    [
      'openai without usage',
      'openai',
      { messages: [{ role: 'user', content: 'one two three four five' }] },
      { choices: [{ message: { content: 'a b c d e f g h i j' } }] },
      { model: undefined, inputTokens: 5, outputTokens: 10, estimated: true },
    ],
    [
      'usage fields that are not counts',
      'openai',
      { messages: [{ role: 'user', content: 'one two' }] },
      { usage: { prompt_tokens: -5, completion_tokens: 'many' }, choices: [{ message: { content: 'x' } }] },
      { model: undefined, inputTokens: 2, outputTokens: 1, estimated: true },
    ],
  ])('%s', (_name, provider, req, res, expected) => {
    expect(x.measure(provider, req, res)).toMatchObject(expected);
  });

  it('search providers count one search, exactly', () => {
    expect(x.measure('tavily', { query: 'q' }, { results: [] })).toEqual({
      inputTokens: 0,
      outputTokens: 0,
      searches: 1,
      images: 0,
      pages: 0,
      model: undefined,
      estimated: false,
    });
  });

  it('the generic rules count searches, images and pages from the request', () => {
    expect(x.measure('other', { url: 'https://x' }, {})).toMatchObject({ pages: 1, searches: 0, images: 0 });
    expect(x.measure('other', { generate_image: true }, {})).toMatchObject({ images: 1 });
  });

  it('estimates before the call: prompt tokens plus the output bound', () => {
    expect(
      x.estimate('openai', { messages: [{ role: 'user', content: 'a b c' }], max_tokens: 100 }),
    ).toMatchObject({
      inputTokens: 3,
      outputTokens: 100,
      estimated: true,
    });
    expect(
      x.estimate('gemini', {
        contents: [{ parts: [{ text: 'a' }] }],
        generationConfig: { maxOutputTokens: 7 },
      }),
    ).toMatchObject({
      inputTokens: 1,
      outputTokens: 7,
    });
    expect(x.estimate('anthropic', { system: 'be brief', messages: [] })).toMatchObject({
      inputTokens: 2,
      outputTokens: 1024,
    });
  });
});
