import { randomFillSync } from 'node:crypto';

/** `HEX_CODES[2b]`, `HEX_CODES[2b + 1]`: the two lower-case hex digits of byte b, as character codes. */
const HEX_CODES = Uint8Array.from({ length: 512 }, (_, i) =>
  '0123456789abcdef'.charCodeAt(i & 1 ? (i >> 1) & 15 : i >> 5),
);
/** The id's 36 characters are written here, then read out as one string. */
const out = Buffer.from('00000000-0000-7000-8000-000000000000', 'latin1');
/** Random bytes drawn 4 KiB at a time: one system call per ~600 ids instead of one per id. */
const pool = Buffer.alloc(4096);
let poolAt = pool.length;
let lastMs = -1;
/** 32-bit counter within a millisecond, started at a random value below 2^31 each new millisecond. */
let seq = 0;

function randomBytes(n: number): number {
  if (poolAt + n > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const at = poolAt;
  poolAt += n;
  return at;
}

/**
 * A time-ordered request id (UUIDv7, RFC 9562): 48 bits of Unix milliseconds, then a 32-bit counter that
 * starts at a random value each millisecond and is incremented within it (so ids made by one process sort
 * in the order they were made, as with method 1 of the RFC), then 42 random bits. Ledger inserts land at
 * the end of the primary-key index, which measured 5–7 µs per row at commit against ~26 µs for random
 * UUIDs. (The `uuid` package's `v7` cost 2.4 µs per id here; this costs a tenth of that.)
 */
export function newRequestId(): string {
  let ms = Date.now();
  if (ms > lastMs) {
    lastMs = ms;
    seq = pool.readUInt32BE(randomBytes(4)) >>> 1;
  } else {
    ms = lastMs;
    seq++;
    if (seq > 0xffffffff) {
      // 2^31 ids in one millisecond at the least: borrow the next one.
      ms = ++lastMs;
      seq = 0;
    }
  }
  const r = randomBytes(6);
  const hi = Math.floor(ms / 0x1000000);
  const lo = ms % 0x1000000;
  hex(0, (hi >>> 16) & 0xff);
  hex(2, (hi >>> 8) & 0xff);
  hex(4, hi & 0xff);
  hex(6, (lo >>> 16) & 0xff);
  hex(9, (lo >>> 8) & 0xff);
  hex(11, lo & 0xff);
  hex(14, 0x70 | ((seq >>> 28) & 0x0f));
  hex(16, (seq >>> 20) & 0xff);
  hex(19, 0x80 | ((seq >>> 14) & 0x3f));
  hex(21, (seq >>> 6) & 0xff);
  hex(24, ((seq & 0x3f) << 2) | (pool[r] & 0x03));
  hex(26, pool[r + 1]);
  hex(28, pool[r + 2]);
  hex(30, pool[r + 3]);
  hex(32, pool[r + 4]);
  hex(34, pool[r + 5]);
  // One string of 36 one-byte characters; built by concatenation it was 18 strings (~0.6 KB per id in the
  // heap profile).
  return out.toString('latin1', 0, 36);
}

function hex(at: number, byte: number): void {
  out[at] = HEX_CODES[byte << 1];
  out[at + 1] = HEX_CODES[(byte << 1) + 1];
}
