import { Injectable, UnauthorizedException, type CanActivate, type ExecutionContext } from '@nestjs/common';

/**
 * The demo's guard of the usage dashboard's user view: the request must carry a demo key (the global
 * `ApiKeyGuard` has made it `request.user`); the page then shows that user's usage, and only theirs.
 */
@Injectable()
export class SignedInGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const req = context.switchToHttp().getRequest<{ user?: { id?: string } }>();
    if (!req.user?.id) throw new UnauthorizedException('send a demo key: Authorization: Bearer <key>');
    return true;
  }
}
