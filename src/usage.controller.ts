import { Controller, Get, Req, UnauthorizedException } from '@nestjs/common';
import { UsageService, type UsageReport } from '@app/usage-monitoring';

/** `GET /usage/me`: the caller's own usage, from the authenticated principal only. */
@Controller('usage')
export class UsageController {
  constructor(private readonly usage: UsageService) {}

  @Get('me')
  me(@Req() req: { user?: { id?: string } }): Promise<UsageReport> {
    const id = req.user?.id;
    if (!id) throw new UnauthorizedException();
    return this.usage.getUsage(id);
  }
}
