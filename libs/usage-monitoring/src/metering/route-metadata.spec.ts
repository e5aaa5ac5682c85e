import { Get, HttpCode, Post, Sse } from '@nestjs/common';
import { routeInfoOf } from './route-metadata';

class Routes {
  @Sse('events')
  events() {}

  @Post('created')
  @HttpCode(202)
  accepted() {}

  @Get('plain')
  plain() {}
}

describe('routeInfoOf (keys learnt from the public decorators)', () => {
  it('recognises @Sse(), @HttpCode() and a plain route', () => {
    expect(routeInfoOf(Routes.prototype.events)).toEqual({ sse: true, httpCode: undefined });
    expect(routeInfoOf(Routes.prototype.accepted)).toEqual({ sse: false, httpCode: 202 });
    expect(routeInfoOf(Routes.prototype.plain)).toEqual({ sse: false, httpCode: undefined });
  });
});
