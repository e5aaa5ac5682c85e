import { validate, version } from 'uuid';
import { newRequestId } from './request-id';

describe('newRequestId', () => {
  it('makes UUIDv7 ids carrying the time, unique and sorted in the order they were made', () => {
    const before = Date.now();
    const ids = Array.from({ length: 50_000 }, () => newRequestId());
    const after = Date.now();
    expect(ids.every((id) => validate(id) && version(id) === 7)).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    const ms = (id: string) => parseInt(id.replace(/-/g, '').slice(0, 12), 16);
    expect(ms(ids[0])).toBeGreaterThanOrEqual(before);
    expect(ms(ids[ids.length - 1])).toBeLessThanOrEqual(after + 1);
    // The variant bits (10xx) of RFC 9562.
    expect(ids.every((id) => /^[89ab]$/.test(id[19]))).toBe(true);
  });
});
