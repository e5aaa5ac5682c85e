// Setup file of the `e2e-pg` Jest project: the whole end-to-end suite runs against the shared PostgreSQL store.
process.env.USAGE_TEST_STORE = 'postgres';
