// End-to-end specs drive real processes, sockets and timers on a shared 2-core machine: a test is
// retried once, and the first failure is printed, so a timing hiccup is visible without blocking CI.
jest.retryTimes(1, { logErrorsBeforeRetry: true });
