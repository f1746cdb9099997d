export interface PrivatePostgres {
  /** Admin URL (database `postgres`). */
  url: string;
  /** The postmaster's pid: its children are the server's other processes. */
  pid: number;
  stop(): void;
}

export function startPostgres(): Promise<PrivatePostgres | undefined>;
