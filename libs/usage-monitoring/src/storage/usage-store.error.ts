import type { EnforcementFailureReason } from '../usage-monitoring.constants';

/** A store failure with the coarse reason it is counted under. The message never reaches a client. */
export class UsageStoreError extends Error {
  constructor(
    readonly reason: EnforcementFailureReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'UsageStoreError';
  }
}
