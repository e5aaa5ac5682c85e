/**
 * Splits a main-thread `.cpuprofile` (V8's sampling profiler) into where a metered request's CPU goes.
 * Each sample is charged to the innermost frame on its stack that belongs to one of the parts below (by
 * the frame's file, and for a few files by its function): the library's own files, the packages it calls
 * for that part (the tokenizer, the price catalog, SQLite's bindings), and the host's (Nest, Express,
 * the body parser, the bench's handler), which the no-op guard + interceptor pays too. Node's internals,
 * builtins and rxjs take the part of their caller.
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** The parts of a metered request, in the order of the table. */
export const PARTS = [
  'guard: identity, plan, limits',
  'estimate (tokenizer)',
  'price lookup',
  'reservation',
  'interceptor',
  'settle: usage, cost, counters',
  'commit: journal, intents, user files',
  'request and response: Nest, Express, handler',
  'garbage collection',
  'V8 and native, unattributed',
] as const;
export type Part = (typeof PARTS)[number];

const LIB = '/usage-monitoring/src/';

const HOST: Part = 'request and response: Nest, Express, handler';
/** Packages whose frames take the part of whoever called them (rxjs runs the interceptor's operators). */
const TRANSPARENT = ['/node_modules/rxjs/', '/node_modules/tslib/'];

/**
 * The part a frame belongs to; `undefined` for a frame that takes its caller's part (Node's internals,
 * builtins, rxjs). Any other package, and the bench's own handlers, are the host's: a handler that the
 * interceptor's `next.handle()` runs is the host's work, not the interceptor's.
 */
function partOf(url: string, fn: string): Part | undefined {
  if (url.includes('/node_modules/gpt-tokenizer/')) return 'estimate (tokenizer)';
  if (url.includes('/node_modules/@pydantic/genai-prices/')) return 'price lookup';
  if (
    url.includes('/node_modules/sqlite3/') ||
    url.includes('/node_modules/better-sqlite3/') ||
    url.includes('/node_modules/typeorm/') ||
    /\/node_modules\/pg(-[a-z]+)?\//.test(url) // the shared store's driver: pg, pg-protocol, pg-pool, pg-types
  )
    return 'commit: journal, intents, user files';
  const at = url.indexOf(LIB);
  if (at < 0) {
    if (url === '' || url.startsWith('node:') || TRANSPARENT.some((t) => url.includes(t))) return undefined;
    return HOST;
  }
  const file = url.slice(at + LIB.length);
  if (file.startsWith('pricing/')) return 'price lookup';
  if (file.startsWith('metering/token-estimator') || file.startsWith('metering/text-fields'))
    return 'estimate (tokenizer)';
  if (file.startsWith('metering/usage-extractor'))
    return /estimat/i.test(fn) ? 'estimate (tokenizer)' : 'settle: usage, cost, counters';
  if (
    file.startsWith('storage/sqlite/usage-journal') ||
    file.startsWith('storage/sqlite/sqlite-batch-writer') ||
    file.startsWith('storage/sqlite/sqlite-connection') ||
    file.startsWith('storage/sqlite/parked-ledgers') ||
    file.startsWith('storage/shared/')
  )
    return 'commit: journal, intents, user files';
  if (file.startsWith('storage/sqlite/user-ledger') || file.startsWith('storage/sqlite/per-user-sqlite'))
    return /settle|write|apply|pending|journal/i.test(fn)
      ? 'settle: usage, cost, counters'
      : /Intent/.test(fn)
        ? 'commit: journal, intents, user files'
        : 'reservation';
  if (file.startsWith('enforcement/usage-enforcer') || file.startsWith('storage/settlement'))
    return /settle|interrupted/i.test(fn) ? 'settle: usage, cost, counters' : 'reservation';
  if (file.startsWith('metering/usage-settler') || file.startsWith('alerts/') || file.startsWith('health/'))
    return 'settle: usage, cost, counters';
  if (
    file.startsWith('metering/metering.interceptor') ||
    file.startsWith('metering/metered-stream') ||
    file.startsWith('metering/stream-usage')
  )
    return 'interceptor';
  return 'guard: identity, plan, limits';
}

/** Microseconds of main-thread CPU per part, over the whole profile. */
export function splitProfile(file: string): Map<Part, number> {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const partOfNode = new Map<number, Part | null>();
  const resolve = (id: number): Part | null => {
    const known = partOfNode.get(id);
    if (known !== undefined) return known;
    const { functionName, url } = byId.get(id)!.callFrame;
    let part: Part | null;
    if (functionName === '(garbage collector)') part = 'garbage collection';
    else if (functionName === '(idle)') part = null;
    else if (functionName === '(program)' || functionName === '(root)') part = 'V8 and native, unattributed';
    else {
      part = partOf(url, functionName) ?? null;
      if (part === null) {
        const up = parent.get(id);
        const outer = up === undefined ? null : resolve(up);
        part = outer === null || outer === 'V8 and native, unattributed' ? HOST : outer;
      }
    }
    partOfNode.set(id, part);
    return part;
  };
  const out = new Map<Part, number>(PARTS.map((p) => [p, 0]));
  profile.samples.forEach((id, i) => {
    const part = resolve(id);
    if (part) out.set(part, out.get(part)! + (profile.timeDeltas[i + 1] ?? 0));
  });
  return out;
}
