import {
  Body,
  Controller,
  ForbiddenException,
  Get,
  HttpCode,
  Inject,
  Injectable,
  Param,
  Post,
  Put,
  Query,
  Req,
  UseGuards,
  type CanActivate,
  type Type,
} from '@nestjs/common';
import { SkipMetering } from '../decorators/skip-metering.decorator';
import { UsageService } from '../usage/usage.service';
import type { UsageReport } from '../usage/usage-report.interface';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import type { UsageRequest } from '../usage-monitoring.options';
import type {
  LimitOverride,
  TopInput,
  TopSpender,
  UsageAdjustment,
  UserOverShare,
} from './usage-adjustment.interface';
import { InvalidAdjustmentException, UsageAdminService } from './usage-admin.service';

/** What `GET <path>/users/:userId` answers. */
export interface UserAdminView {
  /** The user asked about. */
  user_id: string;
  /** Their current periods against their limits, as adjusted (`UsageService.getUsage`). */
  usage: UsageReport;
  /** Their overrides in force. */
  overrides: LimitOverride[];
  /** The 20 latest changes, newest first. */
  adjustments: UsageAdjustment[];
}

/**
 * The admin API over HTTP (`adminController` extra): a user's usage, overrides and history; grants,
 * resets and limit changes. The actor recorded is the authenticated principal of the admin request; the
 * body never names it.
 */
@Injectable()
export class UsageAdminController {
  /** @internal Nest injects these. */
  constructor(
    private readonly admin: UsageAdminService,
    private readonly usage: UsageService,
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
  ) {}

  /** `GET <path>/users?over=0.8&limit=`: users at or above a share of any limit, highest first. */
  @Get('users')
  list(@Query('over') over?: string, @Query('limit') limit?: string): Promise<UserOverShare[]> {
    return this.admin.list({ over: numberOf(over, 'over')!, limit: numberOf(limit, 'limit') });
  }

  /** `GET <path>/top?by=cost|tokens|calls&limit=`: who spent the most this billing month. */
  @Get('top')
  top(@Query('by') by?: string, @Query('limit') limit?: string): Promise<TopSpender[]> {
    return this.admin.top({ by: by as TopInput['by'], limit: numberOf(limit, 'limit') });
  }

  /** `GET <path>/users/:userId`: the user's usage, overrides and latest changes. */
  @Get('users/:userId')
  async user(@Param('userId') userId: string): Promise<UserAdminView> {
    const [usage, overrides, adjustments] = await Promise.all([
      this.usage.getUsage(userId),
      this.admin.overrides(userId),
      this.admin.history(userId, { limit: 20 }),
    ]);
    return { user_id: userId, usage, overrides, adjustments };
  }

  /** `GET <path>/users/:userId/adjustments?limit=`: the user's history, newest first. */
  @Get('users/:userId/adjustments')
  history(@Param('userId') userId: string, @Query('limit') limit?: string): Promise<UsageAdjustment[]> {
    const n = limit === undefined ? undefined : Number(limit);
    return this.admin.history(userId, { limit: n });
  }

  /** `POST <path>/users/:userId/grants` `{ scope, metric, period?, amount, reason }`. */
  @Post('users/:userId/grants')
  @HttpCode(201)
  grant(
    @Param('userId') userId: string,
    @Body() body: Record<string, unknown> | undefined,
    @Req() req: UsageRequest,
  ): Promise<UsageAdjustment> {
    const b = bodyOf(body);
    return this.admin.grant(userId, {
      scope: b.scope as string,
      metric: b.metric as never,
      period: b.period as never,
      amount: b.amount as number,
      reason: b.reason as string,
      actor: this.actor(req),
    });
  }

  /** `POST <path>/users/:userId/resets` `{ scope?, metric?, period?, reason }`. */
  @Post('users/:userId/resets')
  @HttpCode(201)
  reset(
    @Param('userId') userId: string,
    @Body() body: Record<string, unknown> | undefined,
    @Req() req: UsageRequest,
  ): Promise<UsageAdjustment[]> {
    const b = bodyOf(body);
    return this.admin.reset(userId, {
      scope: b.scope as string | undefined,
      metric: b.metric as never,
      period: b.period as never,
      reason: b.reason as string,
      actor: this.actor(req),
    });
  }

  /** `PUT <path>/users/:userId/limits` `{ scope, metric, period?, max, until?, reason }`; `max: null` clears. */
  @Put('users/:userId/limits')
  setLimit(
    @Param('userId') userId: string,
    @Body() body: Record<string, unknown> | undefined,
    @Req() req: UsageRequest,
  ): Promise<UsageAdjustment> {
    const b = bodyOf(body);
    const common = {
      scope: b.scope as string,
      metric: b.metric as never,
      period: b.period as never,
      reason: b.reason as string,
      actor: this.actor(req),
    };
    if (b.max === null) return this.admin.clearLimit(userId, common);
    return this.admin.setLimit(userId, {
      ...common,
      max: b.max as number,
      until: b.until as string | undefined,
    });
  }

  /** `POST <path>/alerts/resend` `{ user_id? }`: parked alert webhooks sent again; `{ resent }`. */
  @Post('alerts/resend')
  @HttpCode(200)
  async resendAlerts(@Body() body: Record<string, unknown> | undefined): Promise<{ resent: number }> {
    const userId = body?.user_id;
    if (userId !== undefined && typeof userId !== 'string')
      throw new InvalidAdjustmentException('user_id must be a string');
    return { resent: await this.admin.resendParkedAlerts(userId) };
  }

  private actor(req: UsageRequest): string {
    const id = this.options.userId(req);
    if (typeof id !== 'string' || id === '')
      throw new ForbiddenException({
        error: 'Forbidden',
        message: 'the admin API records who made each change: the request has no authenticated principal',
      });
    return id;
  }
}

/** A number of the query string; absent stays undefined, text that is not a number is a 400. */
function numberOf(value: string | undefined, field: string): number | undefined {
  if (value === undefined) return undefined;
  const n = value.trim() === '' ? NaN : Number(value);
  if (!Number.isFinite(n)) throw new InvalidAdjustmentException(`${field} must be a number`);
  return n;
}

function bodyOf(body: Record<string, unknown> | undefined): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new InvalidAdjustmentException('the body must be a JSON object');
  return body;
}

/** The admin controller class for a module: mounted at `path`, behind the host's `guards`. */
export function adminControllerFor(
  path: string,
  guards: readonly (Type<CanActivate> | CanActivate)[],
): Type<UsageAdminController> {
  class MountedUsageAdminController extends UsageAdminController {}
  Controller(path)(MountedUsageAdminController);
  UseGuards(...guards)(MountedUsageAdminController);
  SkipMetering()(MountedUsageAdminController);
  return MountedUsageAdminController;
}
