import { Reflector } from '@nestjs/core';

/** What `@Metered()` says of a handler or controller. */
export interface MeteredOptions {
  /** Provider name, matched against plan limit scopes and provider groups. */
  provider: string;
  /** Model assumed when neither the request nor the response names one. */
  model?: string;
}

/**
 * Meters a handler or a whole controller (the handler's decorator wins) for a provider, instead of
 * detecting the provider from the path.
 *
 * @example
 * ```ts
 * @Post('chat/completions')
 * @Metered({ provider: 'openai' })
 * chat(@Body() body: ChatRequest) {}
 * ```
 */
export const Metered = Reflector.createDecorator<MeteredOptions>();
