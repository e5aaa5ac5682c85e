import type { Database, RunResult, Statement } from 'sqlite3';

/** The prepared statements of one `sqlite3` connection, prepared once per SQL text and reused. */
export class PreparedStatements {
  private readonly statements = new Map<string, Statement>();

  constructor(private readonly db: Database) {}

  /** Runs a statement; resolves with the last inserted rowid. */
  run(sql: string, params: unknown[]): Promise<number> {
    let stmt = this.statements.get(sql);
    if (!stmt) {
      stmt = this.db.prepare(sql);
      // A statement that fails to prepare reports it to every run; keep the emitter from throwing.
      stmt.on('error', () => undefined);
      this.statements.set(sql, stmt);
    }
    const s = stmt;
    const statements = this.statements;
    return new Promise((resolve, reject) =>
      s.run(params, function (this: RunResult, err: Error | null) {
        if (!err) return resolve(this.lastID);
        // Prepare again next time: the failure may have been the statement's (e.g. a database replaced).
        if (statements.get(sql) === s) statements.delete(sql);
        s.finalize(() => undefined);
        reject(err);
      }),
    );
  }

  async finalizeAll(): Promise<void> {
    const all = [...this.statements.values()];
    this.statements.clear();
    await Promise.all(all.map((s) => new Promise<void>((resolve) => s.finalize(() => resolve()))));
  }
}
