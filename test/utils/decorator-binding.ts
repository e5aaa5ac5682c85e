/** Jest setup of the `e2e-decorator` project: the test controllers bind metering with `@UsageMetered()`. */
process.env.USAGE_TEST_BINDING = 'decorator';
