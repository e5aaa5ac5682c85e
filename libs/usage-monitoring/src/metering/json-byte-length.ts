/** Deeper than this, the value is measured by `JSON.stringify` itself (which also reports a cycle). */
const MAX_DEPTH = 256;

/**
 * Characters counted one by one: those a JSON string escapes (`"`, `\`, the control characters) and
 * surrogates (a pair is one four-byte code point, a lone one is escaped).
 */
// eslint-disable-next-line no-control-regex -- the control characters are what it finds
const COUNTED = /[\u0000-\u001f"\\\ud800-\udfff]/;

/**
 * The UTF-8 byte length of `JSON.stringify(value)` (0 when it gives `undefined` or throws: a cycle, a
 * `BigInt`), without making that string: the metering interceptor records the size of every response it
 * meters, and stringifying a response to count it was a copy of the whole body on each request, made again
 * when the platform sends it.
 *
 * Follows `JSON.stringify`: `toJSON` (a `Date`), boxed primitives, own enumerable keys, members that are
 * `undefined`, functions or symbols left out of objects and `null` in arrays, non-finite numbers as `null`,
 * escapes (two bytes for `\n`, six for other control characters and for lone surrogates). A Buffer is sent
 * as it is: its length.
 */
export function jsonByteLength(value: unknown): number {
  if (value === undefined || value === null) return 0;
  if (typeof value === 'string') return Buffer.byteLength(value);
  if (Buffer.isBuffer(value)) return value.length;
  try {
    return measure(value, '', 0) ?? 0;
  } catch {
    return 0;
  }
}

/** The byte length of `value` as a JSON member (`undefined`: left out, as `JSON.stringify` leaves it out). */
function measure(value: unknown, key: string | number, depth: number): number | undefined {
  if (value !== null && (typeof value === 'object' || typeof value === 'bigint')) {
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === 'function') value = toJSON.call(value, String(key));
  }
  switch (typeof value) {
    case 'string':
      return stringLength(value);
    case 'number':
      // ASCII digits, sign, point and exponent; `NaN` and the infinities are written `null`.
      return Number.isFinite(value) ? String(value).length : 4;
    case 'boolean':
      return value ? 4 : 5;
    case 'object':
      break;
    case 'bigint':
      throw new TypeError('Do not know how to serialize a BigInt');
    default:
      return undefined; // undefined, a function, a symbol
  }
  if (value === null) return 4;
  if (
    value instanceof Number ||
    value instanceof String ||
    value instanceof Boolean ||
    value instanceof BigInt
  )
    return measure(value.valueOf(), key, depth);
  if (depth >= MAX_DEPTH) return Buffer.byteLength(JSON.stringify(value));
  if (Array.isArray(value)) {
    let n = value.length > 0 ? value.length + 1 : 2; // brackets and commas
    for (let i = 0; i < value.length; i++) n += measure(value[i], i, depth + 1) ?? 4;
    return n;
  }
  let n = 2; // braces
  let members = 0;
  const o = value as Record<string, unknown>;
  for (const k in o) {
    if (!Object.prototype.hasOwnProperty.call(o, k)) continue;
    const v = measure(o[k], k, depth + 1);
    if (v === undefined) continue;
    n += stringLength(k) + 1 + v; // "key":value
    members++;
  }
  return members > 1 ? n + members - 1 : n;
}

/** The byte length of a string as JSON writes it: quoted, escaped, in UTF-8. */
function stringLength(s: string): number {
  // Most strings (keys, ids, model names) need no escape: counted by V8 and Node without a copy.
  if (!COUNTED.test(s)) return Buffer.byteLength(s) + 2;
  let n = 2;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) {
      if (c === 0x22 || c === 0x5c || c === 8 || c === 9 || c === 10 || c === 12 || c === 13) n += 2;
      else n += c < 0x20 ? 6 : 1;
    } else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      const d = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4; // a surrogate pair: one code point of four bytes
        i++;
      } else n += 6; // a lone surrogate: \udXXX
    } else n += c >= 0xdc00 && c <= 0xdfff ? 6 : 3;
  }
  return n;
}
