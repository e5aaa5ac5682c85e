import fc from 'fast-check';
import { basename, join, resolve } from 'node:path';
import { userFileName } from './user-file-name';

describe('userFileName', () => {
  it('is a plain file name made of safe characters, for any id', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 600 }), (id) => {
        const name = userFileName(id);
        expect(name).toMatch(/^([a-z0-9-]+--)?[0-9a-f]{64}\.sqlite$/);
        expect(basename(name)).toBe(name);
        expect(resolve(join('/data', name)).startsWith('/data/')).toBe(true);
      }),
      { numRuns: 5000 },
    );
  });

  it('maps the same id to the same file and distinct ids to distinct files (100,000 random ids)', () => {
    const seen = new Map<string, string>();
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }), (id) => {
        const name = userFileName(id);
        expect(userFileName(id)).toBe(name);
        const prior = seen.get(name);
        if (prior !== undefined) expect(prior).toBe(id);
        seen.set(name, id);
      }),
      { numRuns: 100_000 },
    );
  });

  it('keeps a readable prefix', () => {
    expect(userFileName('Alice@Example.com').startsWith('alice-example-com--')).toBe(true);
    expect(userFileName('../../etc/passwd').startsWith('etc-passwd--')).toBe(true);
    expect(userFileName('🙂')).toMatch(/^[0-9a-f]{64}\.sqlite$/);
  });
});
