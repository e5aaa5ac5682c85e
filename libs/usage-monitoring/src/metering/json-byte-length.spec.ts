import fc from 'fast-check';
import { jsonByteLength } from './json-byte-length';

/**
 * What the platform sends for a handler's value: nothing for null or undefined, a string or a Buffer as it
 * is, anything else as JSON.
 */
function sentBytes(value: unknown): number {
  if (value === null || value === undefined) return 0;
  if (typeof value === 'string') return Buffer.byteLength(value);
  if (Buffer.isBuffer(value)) return value.length;
  try {
    const json = JSON.stringify(value);
    return json === undefined ? 0 : Buffer.byteLength(json);
  } catch {
    return 0;
  }
}

describe('jsonByteLength', () => {
  it('is the byte length of JSON.stringify for any JSON value (strings of any code units)', () => {
    fc.assert(
      fc.property(fc.jsonValue({ stringUnit: 'binary', maxDepth: 6 }), (v) => {
        expect(jsonByteLength(v)).toBe(sentBytes(v));
      }),
      { numRuns: 5_000 },
    );
  });

  it('follows JSON.stringify for any JavaScript value: dates, boxed values, holes, maps, bigints, undefined', () => {
    const anything = fc.anything({
      maxDepth: 4,
      stringUnit: 'binary',
      withBigInt: true,
      withBoxedValues: true,
      withDate: true,
      withMap: true,
      withSet: true,
      withNullPrototype: true,
      withObjectString: true,
      withSparseArray: true,
      withTypedArray: true,
      withUnicodeString: true,
    });
    fc.assert(
      fc.property(anything, (v) => {
        expect(jsonByteLength(v)).toBe(sentBytes(v));
      }),
      { numRuns: 5_000 },
    );
  });

  it('counts escapes, surrogate pairs and lone surrogates as JSON writes them', () => {
    const cases: [unknown, string][] = [
      [{ a: 'x"y\\z\n\t\u0001' }, '{"a":"x\\"y\\\\z\\n\\t\\u0001"}'],
      [['😀', '\ud800', '\udc00x', 'é', '€'], '["😀","\\ud800","\\udc00x","é","€"]'],
      [
        { n: NaN, i: -Infinity, z: -0, e: 1e21, f: undefined, g: () => 1, s: Symbol('s') },
        '{"n":null,"i":null,"z":0,"e":1e+21}',
      ],
      [[undefined, () => 1, Symbol('s')], '[null,null,null]'],
      [{ d: new Date(0), bad: new Date(NaN) }, '{"d":"1970-01-01T00:00:00.000Z","bad":null}'],
      [{ toJSON: (key: string) => ({ key }) }, '{"key":""}'],
      [[{ toJSON: (key: string) => key }], '["0"]'],
      [{}, '{}'],
      [[], '[]'],
      [true, 'true'],
      [12.5, '12.5'],
    ];
    for (const [value, json] of cases) {
      expect(JSON.stringify(value)).toBe(json);
      expect(jsonByteLength(value)).toBe(Buffer.byteLength(json));
    }
  });

  it('sends strings and Buffers as they are, and measures nothing it cannot send', () => {
    expect(jsonByteLength('héllo')).toBe(6);
    expect(jsonByteLength(Buffer.alloc(7))).toBe(7);
    expect(jsonByteLength(undefined)).toBe(0);
    expect(jsonByteLength(null)).toBe(0);
    expect(jsonByteLength(() => 1)).toBe(0);
    expect(jsonByteLength({ big: 1n })).toBe(0);
    const cycle: Record<string, unknown> = { a: 1 };
    cycle.self = cycle;
    expect(jsonByteLength(cycle)).toBe(0);
    // Deeper than the walk goes, JSON.stringify measures the rest.
    let deep: unknown = 'end';
    for (let i = 0; i < 1_000; i++) deep = { d: deep };
    expect(jsonByteLength(deep)).toBe(Buffer.byteLength(JSON.stringify(deep)));
  });
});
