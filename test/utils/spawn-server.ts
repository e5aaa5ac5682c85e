import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export interface ServerProcess {
  url: string;
  child: ChildProcess;
  /** Resolves with the exit code or signal. */
  exited: Promise<number | string | null>;
  stop(signal?: NodeJS.Signals): Promise<number | string | null>;
}

const ROOT = join(__dirname, '..', '..');

/**
 * Starts a server script (by default `test/fixtures/test-server.ts`; TypeScript through ts-node, or compiled
 * JavaScript with `TS_NODE_BASEURL` in `env` pointing at its output root) in a separate Node process
 * and waits until it prints `LISTENING <port>`.
 */
export function spawnServer(
  env: Record<string, string>,
  timeoutMs = 30_000,
  script = join(ROOT, 'test/fixtures/test-server.ts'),
  nodeArgs: string[] = [],
): Promise<ServerProcess> {
  // A compiled script (`.js`, e.g. the benchmark's) needs only the path aliases; TypeScript goes through ts-node.
  const loaders = script.endsWith('.js') ? [] : ['-r', 'ts-node/register/transpile-only'];
  const child = spawn(process.execPath, [...nodeArgs, ...loaders, '-r', 'tsconfig-paths/register', script], {
    cwd: ROOT,
    env: { ...process.env, ...env, TS_NODE_PROJECT: join(ROOT, 'tsconfig.json') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | string | null>((resolve) =>
    child.on('exit', (code, signal) => resolve(signal ?? code)),
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`test server did not start in ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /LISTENING (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({
          url: `http://127.0.0.1:${m[1]}`,
          child,
          exited,
          stop: (signal = 'SIGTERM') => {
            child.kill(signal);
            return exited;
          },
        });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`test server exited (${code}) before listening: ${stderr}`));
    });
  });
}
