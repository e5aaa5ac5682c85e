import { Controller, Get } from '@nestjs/common';

/** An unmetered route: no guard work, no database. */
@Controller('hello')
export class HelloController {
  @Get()
  hello() {
    return { message: 'Hello from the usage-monitoring demo' };
  }
}
