import { Inject, Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';
import type { DemoKey } from './demo-keys';

export const DEMO_KEYS = Symbol('DEMO_KEYS');

/**
 * The demo's authentication: a key where each provider's SDK sends it (`Authorization: Bearer`,
 * `x-api-key`, `x-goog-api-key`) becomes `request.user`. It never refuses: routes that need a user
 * (metered ones, `/usage/me`) refuse with 401 themselves.
 */
@Injectable()
export class ApiKeyGuard implements CanActivate {
  constructor(@Inject(DEMO_KEYS) private readonly keys: Map<string, DemoKey>) {}

  canActivate(context: ExecutionContext): boolean {
    if (context.getType() !== 'http') return true;
    const req = context
      .switchToHttp()
      .getRequest<{ headers: Record<string, string | undefined>; user?: unknown }>();
    const auth = req.headers.authorization;
    const key =
      (auth?.startsWith('Bearer ') ? auth.slice(7).trim() : undefined) ??
      req.headers['x-api-key'] ??
      req.headers['x-goog-api-key'];
    const found = key !== undefined ? this.keys.get(key) : undefined;
    if (found) req.user = { id: found.user, plan: found.plan };
    return true;
  }
}
