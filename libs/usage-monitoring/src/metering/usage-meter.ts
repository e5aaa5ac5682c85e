import { Inject, Injectable } from '@nestjs/common';
import type { MeteringContext } from '../enforcement/metering-context';
import { UsageEnforcer } from '../enforcement/usage-enforcer';
import { MAX_USER_ID_LENGTH } from '../storage/sqlite/user-file-name';
import type { UsageEventRecord } from '../storage/usage-store.interface';
import { NORMALIZED_OPTIONS } from '../usage-monitoring.internal-constants';
import type { NormalizedUsageOptions } from '../usage-monitoring.normalized-options';
import { meterStream } from './metered-stream';
import { checkFigures, isUsageFigures, type UsageEstimate } from './usage-figures';
import type { MeasuredUsage } from './usage-extractor';
import { statusOf, UsageSettler, ZERO_USAGE } from './usage-settler';

/** One provider call to meter: who pays, which provider, and what to reserve before it runs. */
export interface MeterSpec {
  /** The user to charge: take it from the authenticated principal, never from client input. */
  userId: string;
  /** Provider name, as plan limit scopes name it (`'openai'`, `'anthropic'`, `'gemini'`, `'tavily'`…). */
  provider: string;
  /** The model, when the request or result does not name one (priced by it). */
  model?: string;
  /**
   * The provider-shaped request the call sends (`messages`, `max_tokens`…): the reservation is estimated
   * from it, as the guard estimates a request body.
   */
  request?: unknown;
  /** An estimate to reserve instead of reading `request`. */
  estimate?: UsageEstimate;
  /** Recorded as the ledger row's endpoint. @default `meter:<provider>` */
  operation?: string;
}

/** A reservation made up front (`UsageMeter.reserve`): settle it once the call is done, or release it. */
export interface UsageCharge {
  /**
   * Charges what the call used: the provider's result as its SDK returned it (response, or a stream — which
   * is returned metered, as `UsageMeter.run` returns it) or `UsageFigures`. Resolves once the ledger row is
   * durable (with the stream itself for a stream). Settling twice, or after `release()`, throws.
   */
  settle<T>(result: T): Promise<T>;
  /** Records the call as failed (its error's HTTP status), charging nothing. */
  fail(error: unknown): Promise<void>;
  /** Gives the reservation back uncharged (the call never ran); resolves once it is. A no-op once settled. */
  release(): Promise<void>;
}

const NO_CHARGE: UsageCharge = {
  settle: <T>(result: T) => Promise.resolve(result),
  fail: () => Promise.resolve(),
  release: () => Promise.resolve(),
};

/**
 * Meters provider calls made anywhere: in services, in handlers (the fast path, without the guard and
 * interceptor), in jobs. The same reservation and settlement as `UsageLimitGuard` + `MeteringInterceptor`:
 * same store, limits, ledger rows, alerts and health stats. Over a limit it throws
 * `UsageLimitExceededException` (the 429 body and headers when it escapes a handler); store unavailable →
 * `EnforcementUnavailableException` (503).
 *
 * @example
 * ```ts
 * const completion = await this.meter.run(
 *   { userId: user.id, provider: 'openai', request: params },
 *   () => this.openai.chat.completions.create(params),
 * );
 * ```
 */
@Injectable()
export class UsageMeter {
  /** @internal Nest injects these. */
  constructor(
    @Inject(NORMALIZED_OPTIONS) private readonly options: NormalizedUsageOptions,
    private readonly enforcer: UsageEnforcer,
    private readonly settler: UsageSettler,
  ) {}

  /**
   * Reserves every limit of the call all-or-none, runs `call`, and settles from what it returns: an SDK
   * response, an SDK stream (returned so that it is used exactly as without the meter, settled when it ends
   * — `partial` when the consumer stops early), or `UsageFigures`. A `call` that throws is recorded as failed
   * and its error rethrown. When the store admitted the call with a durable intent (the per-user store's
   * default; on the shared store, `durableIntent` for a call not admitted from a lease) the result is returned
   * without waiting for its ledger row to commit — the call's charge at its estimate committed before it ran,
   * so a crash in between still charges it; otherwise once the row is durable.
   */
  async run<T>(spec: MeterSpec, call: () => T | PromiseLike<T>): Promise<T> {
    const metering = await this.admit(spec);
    if (!metering) return call();
    let result: T;
    try {
      result = await call();
    } catch (e) {
      await this.record(metering, spec, 'error', statusOf(e), () => ZERO_USAGE);
      throw e;
    }
    // With an intent the call's charge at its estimate committed before it ran, so a crash before its ledger
    // row commits still charges it: the result need not wait for that commit. Without one (durable intent
    // off, or a call admitted from a lease), it waits.
    return this.settleResult(metering, spec, result, metering.reservation.intent !== true);
  }

  /**
   * Reserves every limit of the call all-or-none, for flows that check several operations up front and
   * settle each as it completes. A charge neither settled nor released is released after
   * `storage.reservationTtlMs`, counted in the health stats and logged.
   */
  async reserve(spec: MeterSpec): Promise<UsageCharge> {
    const metering = await this.admit(spec);
    if (!metering) return NO_CHARGE;
    let done = false;
    const once = (what: string): Error | undefined => {
      if (done || metering.settled)
        return new Error(`UsageMeter: ${what} on a charge that was already settled or released`);
      done = true;
    };
    return {
      settle: <T>(result: T) => {
        const misuse = once('settle()');
        return misuse ? Promise.reject(misuse) : this.settleResult(metering, spec, result, true);
      },
      fail: (error: unknown) => {
        const misuse = once('fail()');
        return misuse
          ? Promise.reject(misuse)
          : this.record(metering, spec, 'error', statusOf(error), () => ZERO_USAGE);
      },
      release: () => {
        if (done) return Promise.resolve();
        done = true;
        return this.enforcer.release(metering);
      },
    };
  }

  private admit(spec: MeterSpec): Promise<MeteringContext | null> {
    checkSpec(spec);
    try {
      return Promise.resolve(
        this.enforcer.admit({
          userId: spec.userId,
          provider: spec.provider,
          model: spec.model,
          body: spec.request,
          estimate: spec.estimate,
          endpoint: spec.operation ?? `meter:${spec.provider}`,
          method: 'CALL',
          requestBytes: 0,
        }),
      );
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private async settleResult<T>(
    metering: MeteringContext,
    spec: MeterSpec,
    result: T,
    waitForCommit: boolean,
  ): Promise<T> {
    const model = spec.model ?? metering.model;
    const metered = meterStream(result, (how, stream, error) => {
      if (metering.settled) return;
      const status = how === 'error' ? statusOf(error) : 200;
      void this.record(metering, spec, how, status, () =>
        this.options.extractor.measureStream(spec.provider, spec.request, stream, model),
      );
    });
    if (metered !== undefined) return metered;
    if (isUsageFigures(result)) {
      try {
        checkFigures(result, 'UsageMeter: the stated usage');
      } catch (e) {
        // Figures that cannot be right: charged at the reservation's estimate, and the mistake thrown.
        await this.record(metering, spec, 'ok', 200, () => ({ ...metering.estimate, model }));
        throw e;
      }
    }
    const settled = this.record(
      metering,
      spec,
      'ok',
      200,
      () =>
        this.options.extractor.settleUsage(spec.provider, spec.request, result, model, metering.estimate)
          .usage,
    );
    if (waitForCommit) await settled;
    return result;
  }

  private record(
    metering: MeteringContext,
    spec: MeterSpec,
    outcome: UsageEventRecord['outcome'],
    statusCode: number,
    usage: () => MeasuredUsage,
  ): Promise<void> {
    return this.settler.settle(metering, {
      outcome,
      statusCode,
      usage,
      responseBytes: 0,
      userAgent: null,
      ip: null,
    });
  }
}

function checkSpec(spec: MeterSpec): void {
  if (typeof spec !== 'object' || spec === null)
    throw new TypeError('UsageMeter: the spec must be an object');
  const { userId, provider } = spec;
  if (typeof userId !== 'string' || userId === '' || userId.length > MAX_USER_ID_LENGTH)
    throw new TypeError(
      `UsageMeter: spec.userId must be a non-empty string of at most ${MAX_USER_ID_LENGTH} characters (the authenticated user's id)`,
    );
  if (typeof provider !== 'string' || provider === '')
    throw new TypeError('UsageMeter: spec.provider must be a non-empty string');
  if (spec.estimate !== undefined) checkFigures(spec.estimate, 'UsageMeter: spec.estimate');
}
