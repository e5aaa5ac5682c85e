import { Test } from '@nestjs/testing';
import request from 'supertest';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Controller, Injectable, Module, Post } from '@nestjs/common';
import { Metered, UsageMonitoringModule, type UsageMonitoringModuleOptions } from '@app/usage-monitoring';
import {
  createTestApp,
  tempDataDir,
  TEST_PLANS,
  type ModuleStyle,
  type Platform,
} from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { describeStore, SQLITE_DRIVER, STORE } from './utils/test-store';
import { CapturingLogger } from './utils/capturing-logger';

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

  it('logs one start-up line: store and where (no credentials), plans, detection, fail-open state', async () => {
    const logger = new CapturingLogger();
    const t = await createTestApp({ logger });
    await t.close();
    const lines = logger.lines.filter((l) => l.includes('plans (default'));
    const rest =
      '7 plans (default "free"); providers detected by path; enforcement fails closed UsageMonitoring';
    expect(lines).toEqual([
      t.store === 'sqlite'
        ? `LOG per-user SQLite store in ${JSON.stringify(t.dataDir)} (${SQLITE_DRIVER}, at most 64 open files); ${rest}`
        : `LOG shared PostgreSQL store at 127.0.0.1:5432/test (leases on); ${rest}`,
    ]);

    const failOpen = new CapturingLogger();
    const open = await createTestApp({ logger: failOpen, usage: { emergencyFailOpen: true } });
    await open.close();
    expect(failOpen.lines.filter((l) => l.includes('plans (default'))).toEqual([
      expect.stringMatching(
        /^WARN .*; enforcement FAILS OPEN \(USAGE_LIMITS_EMERGENCY_FAIL_OPEN\) UsageMonitoring$/,
      ),
    ]);
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
      'bad open timeout',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), openTimeoutMs: -5 } },
      /storage\.openTimeoutMs must be an integer ≥ 1 \(got -5\)/,
    ],
    [
      'bad cache size',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), maxOpenDataSources: 0 } },
      /storage\.maxOpenDataSources/,
    ],
    [
      'a journal that is not an object',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), journal: 'yes' } },
      /storage\.journal must be \{ applyDelayMs, maxUsersInMemory \} \(got "yes"\)/,
    ],
    [
      'the removed direct commit (journal: false)',
      { plans: TEST_PLANS, storage: { dataDir: tempDataDir(), journal: false } },
      /storage\.journal: false is no longer supported: the journal is how the per-user store writes .* Remove the option, or tune it with \{ applyDelayMs, maxUsersInMemory \}/,
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
      /storage\.driver must be one of 'sqlite3', 'better-sqlite3' \(got "sqlite"; did you mean 'sqlite3'\?\)/,
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

  /** Builds the module with `options` through each way of configuring it. */
  const buildWith = (style: ModuleStyle | 'useExisting', options: object) => {
    const usage = options as UsageMonitoringModuleOptions;
    @Injectable()
    class OptionsClass {
      createUsageMonitoringOptions() {
        return usage;
      }
    }
    @Module({ providers: [OptionsClass], exports: [OptionsClass] })
    class OptionsModule {}
    const module =
      style === 'forRoot'
        ? UsageMonitoringModule.forRoot(usage)
        : style === 'useFactory'
          ? UsageMonitoringModule.forRootAsync({ useFactory: async () => usage })
          : style === 'useClass'
            ? UsageMonitoringModule.forRootAsync({ useClass: OptionsClass })
            : UsageMonitoringModule.forRootAsync({ imports: [OptionsModule], useExisting: OptionsClass });
    return Test.createTestingModule({ imports: [module] }).compile();
  };
  const storage = () => ({ dataDir: tempDataDir() });
  const typos: [string, object, string][] = [
    [
      'a misspelt top-level option',
      { plans: TEST_PLANS, storage: storage(), defaultMaxOutputToken: 100 },
      'defaultMaxOutputToken is not an option (did you mean defaultMaxOutputTokens?)',
    ],
    [
      'an option in the wrong case',
      { plans: TEST_PLANS, storage: storage(), enforcementTimeoutMS: 100 },
      'enforcementTimeoutMS is not an option (did you mean enforcementTimeoutMs?)',
    ],
    [
      'a misspelt storage option',
      { plans: TEST_PLANS, storage: { dataDirr: tempDataDir() } },
      'storage.dataDirr is not an option (did you mean storage.dataDir?)',
    ],
    [
      'a misspelt limit field',
      {
        plans: [{ name: 'p', limits: [{ metric: 'calls', scope: '*', max: 1, perod: 'day' }] }],
        storage: storage(),
      },
      'plans[0].limits[0].perod is not an option (did you mean plans[0].limits[0].period?)',
    ],
    [
      'a misspelt metrics option',
      { plans: TEST_PLANS, storage: storage(), metrics: { userId: true } },
      'metrics.userId is not an option (did you mean metrics.userIds?)',
    ],
    [
      'a meter provider that is not one',
      { plans: TEST_PLANS, storage: storage(), metrics: { meterProvider: {} } },
      'metrics.meterProvider must be an OpenTelemetry MeterProvider (an object with getMeter())',
    ],
    [
      'metrics.userIds that is not a boolean',
      { plans: TEST_PLANS, storage: storage(), metrics: { userIds: 'yes' } },
      'metrics.userIds must be one of true, false (got "yes")',
    ],
    [
      'a misspelt webhook option',
      {
        plans: TEST_PLANS,
        storage: storage(),
        alerts: { webhook: { url: 'http://127.0.0.1:9/h', secret: 'x'.repeat(16), timeout: 5 } },
      },
      'alerts.webhook.timeout is not an option (did you mean alerts.webhook.timeoutMs?)',
    ],
    [
      'a webhook URL that is not http(s)',
      {
        plans: TEST_PLANS,
        storage: storage(),
        alerts: { webhook: [{ url: 'file:///etc/passwd', secret: 'x'.repeat(16) }] },
      },
      'alerts.webhook[0].url must be an http: or https: URL (got the protocol file:)',
    ],
    [
      'a webhook secret too short to sign with',
      {
        plans: TEST_PLANS,
        storage: storage(),
        alerts: { webhook: { url: 'https://example.com/hooks', secret: 'short' } },
      },
      'alerts.webhook.secret must be a string of at least 16 characters (the key the receiver checks signatures with)',
    ],
    [
      'a number read from configuration as a string',
      { plans: TEST_PLANS, storage: storage(), enforcementTimeoutMs: '250' },
      'enforcementTimeoutMs must be an integer ≥ 1 (got the string "250": convert numbers read from configuration with Number())',
    ],
    [
      'a limit read from configuration as a string',
      { plans: [{ name: 'p', limits: [{ metric: 'cost', scope: '*', max: '2' }] }], storage: storage() },
      'plans[0].limits[0].max must be a finite, non-negative number of US dollars (got the string "2": convert numbers read from configuration with Number())',
    ],
  ];
  describe.each(['forRoot', 'useFactory', 'useClass', 'useExisting'] as const)('through %s', (style) => {
    it.each(typos)('refuses %s, suggesting the fix', async (_name, options, message) => {
      await expect(buildWith(style, options)).rejects.toThrow(`UsageMonitoringModule: ${message}`);
    });
  });

  it('refuses a limit whose scope names no provider, group or *, and knows the providers of @Metered routes', async () => {
    const typo = await Test.createTestingModule({
      imports: [
        UsageMonitoringModule.forRoot({
          plans: [{ name: 'p', limits: [{ metric: 'calls', scope: 'opnai', max: 1 }] }],
          storage: storage(),
        }),
      ],
    }).compile();
    await expect(typo.init()).rejects.toThrow(
      `UsageMonitoringModule: plans[0].limits[0].scope "opnai" names no provider, provider group or '*' (did you mean "openai"?)`,
    );
    await typo.close().catch(() => undefined);

    @Controller('acme')
    @Metered({ provider: 'acme-llm' })
    class AcmeController {
      @Post()
      call() {
        return {};
      }
    }
    const own = await Test.createTestingModule({
      imports: [
        UsageMonitoringModule.forRoot({
          plans: [{ name: 'p', limits: [{ metric: 'calls', scope: 'acme-llm', max: 1 }] }],
          storage: storage(),
        }),
      ],
      controllers: [AcmeController],
    }).compile();
    await expect(own.init()).resolves.toBe(own);
    await own.close();
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
      imports: [UsageMonitoringModule.forRoot({ plans: TEST_PLANS, storage: { dataDir } })],
    }).compile();
    await expect(moduleRef.init()).rejects.toThrow(
      /storage\.dataDir: cannot open the journal \.usage-journal\.sqlite in ".*"/,
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
