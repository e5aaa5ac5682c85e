import http from 'node:http';
import request from 'supertest';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { describeStore } from './utils/test-store';
import { hasUserData, queryUserDb } from './utils/user-db';

describeStore('bad input', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(() => t.close());

  const post = (user: string) =>
    request(t.url).post('/openai/v1/chat/completions').set('authorization', bearer(user));

  it('a body over the parser limit is 413 before any usage is reserved', async () => {
    const res = await post('big-body')
      .set('content-type', 'application/json')
      .send(JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(2_000_000) }] }));
    expect(res.status).toBe(413);
    expect(await hasUserData(t, 'big-body')).toBe(false);
  });

  it('a 50 MB body is 413 before any usage is reserved; the limit is the app’s body parser, configurable', async () => {
    const limited = await createTestApp({ bodyLimit: '1mb' });
    try {
      const send = (user: string, bytes: number) =>
        new Promise<number>((resolve) => {
          const head = '{"messages":[{"role":"user","content":"';
          const tail = '"}]}';
          const filler = Buffer.alloc(bytes - head.length - tail.length, 'a');
          const req = http.request(
            `${limited.url}/openai/v1/chat/completions`,
            {
              method: 'POST',
              headers: {
                authorization: bearer(user),
                'content-type': 'application/json',
                'content-length': bytes,
              },
            },
            (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            },
          );
          req.on('error', () => undefined); // the server may stop reading once it has refused
          req.write(head);
          req.write(filler);
          req.end(tail);
        });
      expect(await send('fifty-mb', 50 * 1024 * 1024)).toBe(413);
      expect(await hasUserData(limited, 'fifty-mb')).toBe(false);
      // Under the configured 1 MB (over Nest's 100 KB default): parsed, metered.
      expect(await send('900-kb', 900 * 1024)).toBe(200);
      expect(await send('two-mb', 2 * 1024 * 1024)).toBe(413);
      expect(await hasUserData(limited, 'two-mb')).toBe(false);
      const rows = await queryUserDb(limited, '900-kb', 'SELECT status_code FROM usage_events');
      expect(rows).toEqual([{ status_code: 200 }]);
    } finally {
      await limited.close();
    }
  });

  it('malformed JSON is 400 before any usage is reserved', async () => {
    const res = await post('bad-json').set('content-type', 'application/json').send('{"messages": [');
    expect(res.status).toBe(400);
    expect(await hasUserData(t, 'bad-json')).toBe(false);
  });

  it('__proto__ keys and deep nesting neither pollute prototypes nor break metering', async () => {
    let nested: unknown = 'deep';
    for (let i = 0; i < 2000; i++) nested = { content: nested };
    const body = `{"__proto__": {"polluted": true}, "constructor": {"prototype": {"polluted": true}}, "messages": [{"role": "user", "content": "hi"}], "deep": ${JSON.stringify(nested)}}`;
    const res = await post('proto').set('content-type', 'application/json').send(body);
    expect(res.status).toBe(200);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
    const rows = await queryUserDb(t, 'proto', 'SELECT status_code, input_tokens FROM usage_events');
    expect(rows).toEqual([{ status_code: 200, input_tokens: 10 }]);
  });

  it.each([
    ['negative', -5, -1],
    ['NaN-like strings', 'NaN', 'many'],
    ['huge', 1e300, 2 ** 60],
    ['missing', null, null],
  ])(
    'provider usage that is %s never lowers usage: it is estimated and flagged',
    async (kind, prompt, completion) => {
      const user = `odd-usage-${kind}-${Date.now()}`;
      const res = await post(user).send({
        messages: [{ role: 'user', content: 'hello there' }],
        ...(prompt === null ? { omitUsage: true } : { report: { prompt, completion } }),
        reply: 'four words of reply',
      });
      expect(res.status).toBe(200);
      const rows = await queryUserDb(
        t,
        user,
        'SELECT input_tokens, output_tokens, estimated FROM usage_events',
      );
      expect(rows).toEqual([{ input_tokens: 2, output_tokens: 4, estimated: 1 }]);
    },
  );
});
