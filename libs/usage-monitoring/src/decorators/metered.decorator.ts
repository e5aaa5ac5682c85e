import { Reflector } from '@nestjs/core';
import type { UsageEstimate, UsageFigures } from '../metering/usage-figures';
import type { UsageRequest } from '../usage-monitoring.options';

/** What `@Metered()` says of a handler or controller. */
export interface MeteredOptions {
  /** Provider name, matched against plan limit scopes and provider groups. */
  provider: string;
  /** Model assumed when neither the request nor the response names one. */
  model?: string;
  /**
   * Reads the usage out of a handler's own (app-shaped) result: return `UsageFigures`, or the provider's
   * response the result carries. `request` is the HTTP request (the socket client in a gateway); `input` the
   * body, resolver arguments or message data. Without it, a result that reports no usage is charged its
   * reservation's estimate (flagged, with one warning per route).
   *
   * @example `usage: (result: ChatReply) => result.completion`
   */
  usage?: (result: any, request: UsageRequest, input: any) => UsageFigures | object | undefined;
  /**
   * Estimates an app-shaped request (one without the provider's `messages`/`prompt` fields) for the
   * reservation: its prompt text and the bound on output tokens.
   *
   * @example `estimate: (req, body: { message: string }) => ({ text: body.message, maxOutputTokens: 500 })`
   */
  estimate?: (request: UsageRequest, input: any) => UsageEstimate;
}

/**
 * Meters a handler or a whole controller (the handler's decorator wins) for a provider, instead of
 * detecting the provider from the path. Works on HTTP routes, GraphQL resolvers and WebSocket gateways; a
 * `@Metered` handler in a context the guard cannot meter (a microservice) is refused.
 *
 * @example
 * ```ts
 * @Post('chat/completions')
 * @Metered({ provider: 'openai' })
 * chat(@Body() body: ChatRequest) {}
 * ```
 */
export const Metered = Reflector.createDecorator<MeteredOptions>();
