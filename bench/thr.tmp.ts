import autocannon from 'autocannon';
import { readdirSync, readFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawnServer } from '../test/utils/spawn-server';
const B = join(__dirname, '..', 'node_modules/.cache/usage-bench');
const BODY = JSON.stringify({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Say hello to the benchmark' }],
  max_tokens: 16,
});
function threads(pid: number) {
  const out: Record<string, number> = {};
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
    const name = Number(t) === pid ? 'main' : 'other';
    const f = st.split(') ')[1].split(' ');
    out[name] = (out[name] ?? 0) + Number(f[11]) + Number(f[12]);
  }
  return out;
}
async function run(url: string, users: number, duration: number, amount?: number) {
  let next = 0;
  return autocannon({
    url,
    connections: amount ? 20 : 50,
    ...(amount ? { amount } : { duration }),
    requests: [
      {
        method: 'POST',
        path: '/openai/v1/chat/completions',
        headers: { 'content-type': 'application/json' },
        body: BODY,
        setupRequest: (r: any) => ({
          ...r,
          headers: { ...r.headers, authorization: `Bearer bench-user-${next++ % users}` },
        }),
      },
    ],
  });
}
async function main() {
  for (const users of (process.env.USERS ?? '1,1000').split(',').map(Number)) {
    const s = await spawnServer(
      {
        BENCH_MODE: process.env.MODE ?? 'metered',
        BENCH_DATA_DIR: mkdtempSync(join(tmpdir(), 'thr-')),
        BENCH_MAX_OPEN: '1024',
        BENCH_JOURNAL: process.env.J ?? '',
        TS_NODE_BASEURL: B,
      },
      60000,
      join(B, 'bench/bench-server.js'),
    );
    await run(s.url, users, 0, Math.max(users, 4000));
    const a = threads(s.child.pid!);
    const r = await run(s.url, users, Number(process.env.D ?? 6));
    await new Promise((res) => setTimeout(res, Number(process.env.TAIL ?? 0)));
    const b = threads(s.child.pid!);
    const n = r.requests.total;
    const per: Record<string, number> = {};
    for (const k of Object.keys(b)) per[k] = Math.round(((b[k] - (a[k] ?? 0)) * 1e4) / n);
    console.log(users, 'users', Math.round(r.requests.average), 'req/s; CPU µs/req by thread', per);
    s.child.kill('SIGKILL');
  }
}
main();
