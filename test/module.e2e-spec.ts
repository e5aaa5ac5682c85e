import { Test } from '@nestjs/testing';
import request from 'supertest';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageMonitoringModule, type UsageMonitoringModuleOptions } from '@app/usage-monitoring';
import {
  createTestApp,
  tempDataDir,
  TEST_PLANS,
  type ModuleStyle,
  type Platform,
} from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { describeStore, STORE } from './utils/test-store';

const itSqlite = STORE === 'sqlite' ? it : it.skip;
import { queryUserDb } from './utils/user-db';

const chat = { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 20 };

describeStore('UsageMonitoringModule wiring', () => {
  const combos: [ModuleStyle, Platform][] = [
    ['forRoot', 'express'],
    ['useFactory', 'express'],
    ['useClass', 'express'],
    ['forRoot', 'fastify'],
    ['useClass', 'fastify'],
  ];

  it.each(combos)('%s on %s meters, limits and records', async (style, platform) => {
    const t = await createTestApp({ style, platform });
    try {
      const user = `user-${style}-${platform}`;
      const codes: number[] = [];
      for (let i = 0; i < 6; i++) {
        const res = await request(t.url)
          .post('/openai/v1/chat/completions')
          .set('authorization', bearer(user))
          .send(chat);
        codes.push(res.status);
      }
      expect(codes).toEqual([200, 200, 200, 200, 200, 429]);
      const health = await request(t.url).get('/health/usage');
      expect(health.status).toBe(200);
      expect(health.body.usage.recent_requests).toBe(6);
      const rows = await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM usage_events');
      expect(rows[0].n).toBe(5);
    } finally {
      await t.close();
    }
  });

  it('can leave out the health controller', async () => {
    const t = await createTestApp({ healthController: false });
    try {
      expect((await request(t.url).get('/health/usage')).status).toBe(404);
    } finally {
      await t.close();
    }
  });

  const badOptions: [string, object, RegExp][] = [
    ['no plans', { plans: [] }, /plans must be a non-empty array/],
    [
      'negative max',
      { plans: [{ name: 'p', limits: [{ metric: 'calls', scope: '*', max: -1 }] }] },
      /plans\[0\]\.limits\[0\]\.max/,
    ],
    [
      'bad metric',
      { plans: [{ name: 'p', limits: [{ metric: 'cals', scope: '*', max: 1 }] }] },
      /plans\[0\]\.limits\[0\]\.metric/,
    ],
    [
      'bad period',
      { plans: [{ name: 'p', limits: [{ metric: 'calls', scope: '*', period: 'week', max: 1 }] }] },
      /plans\[0\]\.limits\[0\]\.period/,
    ],
    [
      'cost finer than a micro-dollar',
      { plans: [{ name: 'p', limits: [{ metric: 'cost', scope: '*', max: 0.0000001 }] }] },
      /max has more than 6 decimals/,
    ],
    ['unknown default plan', { plans: TEST_PLANS, defaultPlan: 'gold' }, /defaultPlan "gold"/],
    ['bad timeout', { plans: TEST_PLANS, enforcementTimeoutMs: 0 }, /enforcementTimeoutMs/],
    [
      'bad price override',
      { plans: TEST_PLANS, prices: { 'gpt-4o': { inputPerMTok: -1 } } },
      /prices\.gpt-4o\.inputPerMTok/,
    ],
    [
      'unknown price field',
      { plans: TEST_PLANS, prices: { 'gpt-4o': { input: 1 } } },
      /prices\.gpt-4o\.input is not a price field/,
    ],
    ['bad pattern', { plans: TEST_PLANS, providerPatterns: { x: '(' } }, /providerPatterns\.x/],
    [
      'bad cache size',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), maxOpenDataSources: 0 } },
      /storage\.maxOpenDataSources/,
    ],
    [
      'a journal that is not true, false or an object',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), journal: 'yes' } },
      /storage\.journal must be true, false or \{ applyDelayMs, maxUsersInMemory \} \(got "yes"\)/,
    ],
    [
      'a negative journal delay',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), journal: { applyDelayMs: -1 } } },
      /storage\.journal\.applyDelayMs must be an integer ≥ 0 \(got -1\)/,
    ],
    [
      'a journal delay over a minute',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), journal: { applyDelayMs: 600_000 } } },
      /storage\.journal\.applyDelayMs must be ≤ 60000 \(got 600000\)/,
    ],
    [
      'a fractional number of users kept in memory',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), journal: { maxUsersInMemory: 1.5 } } },
      /storage\.journal\.maxUsersInMemory must be an integer ≥ 0 \(got 1\.5\)/,
    ],
    [
      'an unknown SQLite driver',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), driver: 'sqlite' } },
      /storage\.driver must be 'sqlite3' or 'better-sqlite3' \(got "sqlite"\)/,
    ],
  ];

  it.each(badOptions)('refuses to start with %s, naming the option', async (_name, options, message) => {
    const build = Test.createTestingModule({
      imports: [
        UsageMonitoringModule.forRoot({
          ...(options as UsageMonitoringModuleOptions),
          storage: (options as { storage?: object }).storage ?? { dataDir: tempDataDir() },
        }),
      ],
    }).compile();
    await expect(build).rejects.toThrow(message);
  });

  itSqlite('refuses a dataDir that is a file', async () => {
    const file = join(tempDataDir(), 'not-a-dir');
    writeFileSync(file, 'x');
    const moduleRef = await Test.createTestingModule({
      imports: [UsageMonitoringModule.forRoot({ plans: TEST_PLANS, storage: { dataDir: file } })],
    }).compile();
    await expect(moduleRef.init()).rejects.toThrow(/storage\.dataDir ".*not-a-dir" cannot be used/);
  });

  itSqlite('refuses to start when the journal file cannot be opened, naming it', async () => {
    const dataDir = tempDataDir();
    mkdirSync(join(dataDir, '.usage-journal.sqlite')); // a directory where the journal should be
    const moduleRef = await Test.createTestingModule({
      imports: [UsageMonitoringModule.forRoot({ plans: TEST_PLANS, storage: { dataDir, journal: true } })],
    }).compile();
    await expect(moduleRef.init()).rejects.toThrow(
      /storage\.journal: cannot open \.usage-journal\.sqlite in ".*"/,
    );
    await moduleRef.close().catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  });

  itSqlite('refuses a second live owner of the same dataDir and takes over a dead one’s lock', async () => {
    const dataDir = tempDataDir();
    const first = await createTestApp({ usage: { storage: { dataDir } } });
    const moduleRef = await Test.createTestingModule({
      imports: [UsageMonitoringModule.forRoot({ plans: TEST_PLANS, storage: { dataDir } })],
    }).compile();
    await expect(moduleRef.init()).rejects.toThrow(/already used by another UsageMonitoringModule/);
    await first.close();
    // A lock left by a process that no longer exists (pid 2^22 + 1 is above Linux's pid_max default).
    writeFileSync(join(dataDir, '.usage-monitoring.lock'), '4194305 stale-token\n');
    const second = await createTestApp({ usage: { storage: { dataDir } } });
    try {
      const res = await request(second.url)
        .post('/openai/v1/chat/completions')
        .set('authorization', bearer('u'))
        .send(chat);
      expect(res.status).toBe(200);
    } finally {
      await second.close();
    }
  });
});
