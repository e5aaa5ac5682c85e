import { renameSync, rmSync, writeFileSync } from 'node:fs';

/**
 * Takes the per-user data directory away (moved aside, a plain file in its place) so that no user
 * database can be opened; returns the function that puts it back.
 */
export function breakDataDir(dataDir: string): () => void {
  const aside = `${dataDir}.aside`;
  renameSync(dataDir, aside);
  writeFileSync(dataDir, 'not a directory');
  return () => {
    rmSync(dataDir);
    renameSync(aside, dataDir);
  };
}
