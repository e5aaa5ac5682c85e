import { Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';

/** The admin header the test apps' admin guard wants. */
export const ADMIN_KEY = { 'x-admin-key': 'let-me-in' } as const;

/** The host's admin guard in the tests: only requests with the admin key pass. */
@Injectable()
export class AdminKeyGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const req = context.switchToHttp().getRequest<{ headers: Record<string, string | undefined> }>();
    return req.headers['x-admin-key'] === ADMIN_KEY['x-admin-key'];
  }
}
