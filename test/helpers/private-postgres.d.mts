export interface PrivatePostgres {
  /** Admin URL (database `postgres`). */
  url: string;
  /** The postmaster's pid: its children are the server's other processes. */
  pid: number;
  /** `pg_ctl restart -m <mode>` (default fast): every session ends; the server is back when it returns. */
  restart(mode?: 'smart' | 'fast' | 'immediate'): void;
  stop(): void;
}

export function startPostgres(): Promise<PrivatePostgres | undefined>;
