import request from 'supertest';
import { readdirSync, realpathSync } from 'node:fs';
import { join, sep } from 'node:path';
import { sharedUserId } from '@app/usage-monitoring/storage/shared/shared-user-id';
import { userFileName } from '@app/usage-monitoring/storage/sqlite/user-file-name';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { hasUserData, queryUserDb, sqliteFiles } from './utils/user-db';
import { describeStore } from './utils/test-store';

const chat = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };

describeStore('identity', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(() => t.close());

  it('charges the authenticated principal only, whatever headers and query say', async () => {
    const res = await request(t.url)
      .post('/openai/v1/chat/completions?user_id=victim-q')
      .set('authorization', bearer('real-user'))
      .set('x-user-id', 'victim-h')
      .set('x-user-email', 'victim@example.com')
      .set('x-session-id', 'victim-s')
      .send({ ...chat, user_id: 'victim-b' });
    expect(res.status).toBe(200);
    for (const victim of ['victim-q', 'victim-h', 'victim@example.com', 'victim-s', 'victim-b']) {
      expect(await hasUserData(t, victim)).toBe(false);
    }
    const rows = await queryUserDb<{ user_id: string }>(t, 'real-user', 'SELECT user_id FROM usage_events');
    expect(rows).toEqual([{ user_id: 'real-user' }]);
  });

  it('answers 401 to a metered request without a principal, even with identity headers, and opens nothing', async () => {
    const res = await request(t.url)
      .post('/openai/v1/chat/completions?user_id=someone')
      .set('x-user-id', 'someone')
      .send(chat);
    expect(res.status).toBe(401);
    expect(await hasUserData(t, 'someone')).toBe(false);
  });

  it('refuses an id longer than 1024 characters rather than truncating it', async () => {
    const res = await request(t.url)
      .post('/openai/v1/chat/completions')
      .set('authorization', bearer('x'.repeat(1025)))
      .send(chat);
    expect(res.status).toBe(401);
  });

  it('keeps odd ids apart: distinct files inside dataDir (or rows), one per id', async () => {
    const nfc = 'Jos\u00e9';
    const nfd = 'Jose\u0301';
    const ids = [
      '../../x',
      'a/b',
      '..\\x',
      ':memory:',
      'a'.repeat(500),
      'a.b',
      'ab',
      'AB',
      'Ab',
      'CON',
      'nul',
      'file:///etc/passwd',
      '%2e%2e%2f',
      'x\u0000y',
      '🙂',
      nfc,
      nfd,
      ' ',
      '.',
      '..',
      '/',
      'user\nnewline',
    ];
    for (const id of ids) {
      const res = await request(t.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer(id))
        .send(chat);
      expect(res.status).toBe(200);
    }
    if (t.store === 'sqlite') {
      const root = realpathSync(t.dataDir);
      for (const f of readdirSync(t.dataDir)) {
        expect(realpathSync(join(t.dataDir, f)).startsWith(root + sep)).toBe(true);
      }
      expect(new Set(ids.map(userFileName)).size).toBe(ids.length);
      expect(sqliteFiles(t.dataDir).length).toBeGreaterThanOrEqual(ids.length);
    }
    for (const id of ids) {
      const rows = await queryUserDb<{ user_id: string }>(t, id, 'SELECT user_id FROM usage_events');
      expect(rows).toEqual([{ user_id: t.store === 'sqlite' ? id : sharedUserId(id) }]);
    }
  });
});

describeStore('identity options', () => {
  it('trusts one configured header for requests without a principal; the principal still wins', async () => {
    const t = await createTestApp({ usage: { trustedUserHeader: 'x-user-id' } });
    try {
      expect(
        (await request(t.url).post('/openai/v1/chat/completions').set('x-user-id', 'gw-user').send(chat))
          .status,
      ).toBe(200);
      expect(
        (
          await request(t.url)
            .post('/openai/v1/chat/completions')
            .set('authorization', bearer('principal'))
            .set('x-user-id', 'gw-user')
            .send(chat)
        ).status,
      ).toBe(200);
      const gw = await queryUserDb<{ n: number }>(t, 'gw-user', 'SELECT COUNT(*) AS n FROM usage_events');
      expect(gw[0].n).toBe(1);
      const p = await queryUserDb<{ n: number }>(t, 'principal', 'SELECT COUNT(*) AS n FROM usage_events');
      expect(p[0].n).toBe(1);
    } finally {
      await t.close();
    }
  });

  it("anonymous: 'allow' charges requests without a user to one shared anonymous user", async () => {
    const t = await createTestApp({ usage: { anonymous: 'allow' } });
    try {
      for (let i = 0; i < 5; i++)
        expect((await request(t.url).post('/openai/v1/chat/completions').send(chat)).status).toBe(200);
      expect((await request(t.url).post('/openai/v1/chat/completions').send(chat)).status).toBe(429);
      expect(await hasUserData(t, '__anonymous__')).toBe(true);
      if (t.store === 'sqlite') expect(sqliteFiles(t.dataDir)).toEqual([userFileName('__anonymous__')]);
    } finally {
      await t.close();
    }
  });
});
