import { Reflector } from '@nestjs/core';

/**
 * Opts a handler or controller out of metering and enforcement, even when its path matches a provider.
 *
 * @example
 * ```ts
 * @Get('models')
 * @SkipMetering()
 * list() {}
 * ```
 */
export const SkipMetering = Reflector.createDecorator<boolean | undefined>({ transform: () => true });
