export interface PrivatePostgres {
  /** Admin URL (database `postgres`). */
  url: string;
  port: number;
  /** The postmaster's pid (a new one after `restart`): its children are the server's other processes. */
  readonly pid: number;
  /** The user the server runs as, when the tests run as root (PostgreSQL refuses root). */
  ids: { uid: number; gid: number } | undefined;
  /** `pg_ctl restart -m <mode>` (default fast): every session ends; resolves once the server accepts connections again. */
  restart(mode?: 'smart' | 'fast' | 'immediate'): Promise<void>;
  stop(): void;
}

export function startPostgres(): Promise<PrivatePostgres | undefined>;
/** A free TCP port on loopback. */
export function freePort(): Promise<number>;
