import { Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';

/**
 * Stands in for the app's own authentication (passport, a session, an API gateway): it sets
 * `request.user`, which is where nestjs-usage-monitoring reads the user from. Here the bearer token is
 * the user id; a real app verifies it.
 */
@Injectable()
export class AuthGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<{ headers: Record<string, string>; user?: object }>();
    const token = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1];
    if (token) request.user = { id: token };
    return true;
  }
}

/** The app's admin check: only its admin may use the usage admin API (`adminController` below). */
@Injectable()
export class AdminGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<{ user?: { id?: string } }>();
    return request.user?.id === 'admin@example.com';
  }
}

/** The dashboard's user view (`dashboard` below): only a signed-in user, who sees their own usage. */
@Injectable()
export class SignedInGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    return context.switchToHttp().getRequest<{ user?: { id?: string } }>().user?.id !== undefined;
  }
}
