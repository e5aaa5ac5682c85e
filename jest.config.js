/**
 * Unit specs live beside the code in libs/; end-to-end specs in test/, run once per store (and the
 * per-user SQLite ones once more through the better-sqlite3 driver).
 */
const common = {
  rootDir: __dirname,
  moduleFileExtensions: ['js', 'json', 'ts'],
  transform: { '^.+\\.ts$': 'ts-jest' },
  moduleNameMapper: {
    '^@app/usage-monitoring(|/.*)$': '<rootDir>/libs/usage-monitoring/src/$1',
  },
  testEnvironment: 'node',
};

module.exports = {
  globalSetup: '<rootDir>/test/utils/global-setup.ts',
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/libs/**/*.spec.ts'] },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/**/*.e2e-spec.ts'],
      setupFilesAfterEnv: ['<rootDir>/test/utils/retry-once.ts'],
    },
    {
      // The suites that exercise the per-user SQLite files again through the better-sqlite3 driver.
      ...common,
      displayName: 'e2e-better-sqlite3',
      testMatch: [
        'limits',
        'metering',
        'streaming',
        'failures',
        'faults',
        'durability',
        'journal',
        'lru',
        'resources',
        'schema',
      ].map((name) => `<rootDir>/test/${name}.e2e-spec.ts`),
      setupFiles: ['<rootDir>/test/utils/better-sqlite3-mode.ts'],
      setupFilesAfterEnv: ['<rootDir>/test/utils/retry-once.ts'],
    },
    {
      ...common,
      displayName: 'e2e-pg',
      testMatch: ['<rootDir>/test/**/*.e2e-spec.ts'],
      setupFiles: ['<rootDir>/test/utils/postgres-mode.ts'],
      setupFilesAfterEnv: ['<rootDir>/test/utils/retry-once.ts'],
    },
  ],
};
