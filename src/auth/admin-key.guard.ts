import { Inject, Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';

export const DEMO_ADMIN_KEY = Symbol('DEMO_ADMIN_KEY');

/**
 * The demo's guard of the admin API (`/usage/admin`): only a request with `x-admin-key: <the admin key>`
 * passes, as the principal `demo-admin` (the actor its changes record). The key comes from DEMO_ADMIN_KEY,
 * or is made at start and printed.
 */
@Injectable()
export class AdminKeyGuard implements CanActivate {
  constructor(@Inject(DEMO_ADMIN_KEY) private readonly key: string) {}

  canActivate(context: ExecutionContext): boolean {
    const req = context
      .switchToHttp()
      .getRequest<{ headers: Record<string, string | undefined>; user?: unknown }>();
    if (req.headers['x-admin-key'] !== this.key) return false;
    req.user = { id: 'demo-admin' };
    return true;
  }
}
