import fc from 'fast-check';
import type { LimitCharge, UsageEventRecord } from '../usage-store.interface';
import { settleItemOf, settlePayload, type SettleItem } from './settle-item';

const text = fc.string({ maxLength: 12, unit: 'binary' });
const nullableText = fc.option(text, { nil: null });
const count = fc.nat(1_000_000);

const eventArb: fc.Arbitrary<UsageEventRecord> = fc.record({
  requestId: fc.uuid(),
  userId: text,
  provider: fc.constantFrom('openai', 'anthropic', 'tavily'),
  model: nullableText,
  endpoint: text,
  method: fc.constantFrom('POST', 'GET'),
  statusCode: fc.constantFrom(200, 400, 500),
  inputTokens: count,
  outputTokens: count,
  cachedInputTokens: count,
  cacheWriteTokens: count,
  reasoningTokens: count,
  costMicros: count,
  priceVersion: nullableText,
  responseTimeMs: count,
  requestBytes: count,
  responseBytes: count,
  userAgent: nullableText,
  ip: nullableText,
  searches: count,
  images: count,
  pages: count,
  estimated: fc.boolean(),
  outcome: fc.constantFrom('ok', 'error', 'partial', 'interrupted'),
  shadowRefused: nullableText,
  periodKey: fc.constantFrom('month:2026-12-01', 'month:2026-11-15'),
  occurredAt: fc.nat(),
});

const chargeArb: fc.Arbitrary<LimitCharge> = fc.record(
  {
    limitId: text,
    scope: text,
    metric: fc.constantFrom('calls', 'tokens', 'cost'),
    period: fc.constantFrom('day', 'month'),
    periodKey: fc.constantFrom('month:2026-12-01', 'day:2026-12-06'),
    periodStart: fc.nat(),
    periodEnd: fc.nat(),
    max: count,
    amount: count,
    shadowMax: count,
  },
  {
    requiredKeys: [
      'limitId',
      'scope',
      'metric',
      'period',
      'periodKey',
      'periodStart',
      'periodEnd',
      'max',
      'amount',
    ],
  },
);

/**
 * The payload as the store wrote it before each item carried its text (a replacer leaving out the store's
 * fields), from the items' fields as they are now.
 */
const replacerPayload = (items: SettleItem[]) =>
  JSON.stringify(items, (k, v: unknown) =>
    k === 'limits' || k === 'alerts' || k === 'userId' || k === 'payload' ? undefined : v,
  );

describe('settlePayload', () => {
  it("is the items' statement fields, as one JSON array, for items made now and for intents read back", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(text, eventArb, fc.array(chargeArb, { maxLength: 4 }), count, count, count), {
          maxLength: 8,
        }),
        (specs) => {
          const items = specs.map(([userId, e, charges, calls, tokens, costMicros]) =>
            settleItemOf(userId, e, charges, { calls, tokens, costMicros }),
          );
          const before = replacerPayload(items);
          expect(settlePayload(items)).toBe(before);
          // An intent as its reservation row keeps it (no payload), read back at start-up.
          const intents = items.map(
            (i) => JSON.parse(JSON.stringify({ ...i, limits: [], payload: undefined })) as SettleItem,
          );
          expect(intents.every((i) => i.payload === undefined)).toBe(true);
          expect(settlePayload(intents)).toBe(before);
          // The store's later changes to its own fields stay out of the payload.
          for (const i of items) i.alerts.push({ index: 0, threshold: 80, used: 1, max: 1 });
          expect(settlePayload(items)).toBe(before);
        },
      ),
      { numRuns: 300 },
    );
  });
});
