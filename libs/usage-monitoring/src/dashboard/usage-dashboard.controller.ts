import {
  BadRequestException,
  Controller,
  Get,
  Inject,
  Injectable,
  Param,
  Req,
  Res,
  UseGuards,
  type CanActivate,
  type Type,
} from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import { SkipMetering } from '../decorators/skip-metering.decorator';
import { MAX_USER_ID_LENGTH } from '../storage/sqlite/user-file-name';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { UsageRequest } from '../usage-monitoring.options';
import { DashboardFormat } from './dashboard-format';
import { renderOperatorView, renderUserView, renderUserViewForOperator } from './dashboard-views';
import { contentSecurityPolicy, html, page } from './html';
import { UsageDashboardService } from './usage-dashboard.service';

/** Express's response and Fastify's reply both have `status` and `header`. */
interface Reply {
  status(code: number): unknown;
  header(name: string, value: string): unknown;
}

/** Sends a page with its headers: HTML, its CSP (the stylesheet's nonce; no script), never cached. */
function sendPage(res: Reply, body: string, nonce: string, status = 200): string {
  res.status(status);
  res.header('content-type', 'text/html; charset=utf-8');
  res.header('content-security-policy', contentSecurityPolicy(nonce));
  res.header('x-content-type-options', 'nosniff');
  res.header('referrer-policy', 'no-referrer');
  res.header('cache-control', 'no-store');
  return body;
}

const newNonce = () => randomBytes(18).toString('base64');

function acceptLanguage(req: UsageRequest): string | undefined {
  const h = (req as { headers?: Record<string, string | string[] | undefined> }).headers?.['accept-language'];
  return Array.isArray(h) ? h[0] : h;
}

/** `GET <path>`: the signed-in user's own usage. */
@Injectable()
export class UsageDashboardController {
  /** @internal Nest injects these. */
  constructor(
    private readonly dashboard: UsageDashboardService,
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
  ) {}

  @Get()
  async own(@Req() req: UsageRequest, @Res({ passthrough: true }) res: Reply): Promise<string> {
    const f = new DashboardFormat(acceptLanguage(req));
    const nonce = newNonce();
    const userId = this.options.userId(req);
    if (typeof userId !== 'string' || userId === '') {
      const body = page({
        lang: f.locale,
        title: 'Your usage',
        subtitle: 'Not signed in',
        nonce,
        body: html`<p>Sign in to see your usage.</p>`,
      });
      return sendPage(res, body, nonce, 401);
    }
    return sendPage(res, renderUserView(await this.dashboard.userView(userId), f, nonce), nonce);
  }
}

/** `GET <path>/admin` (the operator's view) and `GET <path>/admin/users/:userId` (any user's view). */
@Injectable()
export class UsageDashboardAdminController {
  /** @internal Nest injects these. */
  constructor(private readonly dashboard: UsageDashboardService) {}

  @Get()
  async operator(@Req() req: UsageRequest, @Res({ passthrough: true }) res: Reply): Promise<string> {
    const nonce = newNonce();
    const f = new DashboardFormat(acceptLanguage(req));
    return sendPage(res, renderOperatorView(await this.dashboard.operatorView(), f, nonce), nonce);
  }

  @Get('users/:userId')
  async user(
    @Param('userId') userId: string,
    @Req() req: UsageRequest,
    @Res({ passthrough: true }) res: Reply,
  ): Promise<string> {
    if (typeof userId !== 'string' || userId === '' || userId.length > MAX_USER_ID_LENGTH)
      throw new BadRequestException(`the user id must be 1 to ${MAX_USER_ID_LENGTH} characters`);
    const nonce = newNonce();
    const f = new DashboardFormat(acceptLanguage(req));
    const data = await this.dashboard.userView(userId);
    return sendPage(res, renderUserViewForOperator(data, f, nonce), nonce);
  }
}

/** The dashboard's controller classes for a module: the user's view at `path`, the operator's below it. */
export function dashboardControllersFor(
  path: string,
  guards: readonly (Type<CanActivate> | CanActivate)[],
  adminGuards: readonly (Type<CanActivate> | CanActivate)[] | undefined,
): Type[] {
  class MountedUsageDashboardController extends UsageDashboardController {}
  Controller(path)(MountedUsageDashboardController);
  if (guards.length) UseGuards(...guards)(MountedUsageDashboardController);
  SkipMetering()(MountedUsageDashboardController);
  const out: Type[] = [MountedUsageDashboardController];
  if (adminGuards) {
    class MountedUsageDashboardAdminController extends UsageDashboardAdminController {}
    Controller(`${path.replace(/\/+$/, '')}/admin`)(MountedUsageDashboardAdminController);
    UseGuards(...adminGuards)(MountedUsageDashboardAdminController);
    SkipMetering()(MountedUsageDashboardAdminController);
    out.push(MountedUsageDashboardAdminController);
  }
  return out;
}
