import { HttpException, HttpStatus } from '@nestjs/common';
import { ENFORCEMENT_UNAVAILABLE_CODE } from '../usage-monitoring.constants';

/** Body of the 503 answered when limits cannot be checked (fail closed). */
export const ENFORCEMENT_UNAVAILABLE_BODY = Object.freeze({
  error: 'Usage limit enforcement unavailable',
  message: 'Unable to validate usage limits right now. Please retry shortly.',
  code: ENFORCEMENT_UNAVAILABLE_CODE,
});

/** Seconds a client is told to wait after a 503. */
export const ENFORCEMENT_RETRY_AFTER_SECONDS = 5;

/** 503 Service Unavailable: the usage store could not decide in time. Never carries the cause. */
export class EnforcementUnavailableException extends HttpException {
  constructor() {
    super({ ...ENFORCEMENT_UNAVAILABLE_BODY }, HttpStatus.SERVICE_UNAVAILABLE);
  }
}
