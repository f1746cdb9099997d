import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './private-postgres.mjs';

/** Debian's pgbouncer (.ci/run installs it). */
export const PGBOUNCER = '/usr/sbin/pgbouncer';
export const pgbouncerMissing = existsSync(PGBOUNCER) ? undefined : 'PgBouncer is not installed (apt-get install pgbouncer)';

export interface PgBouncer {
  /** The URL of `database` on the PostgreSQL server, through the bouncer. */
  url(database: string): string;
  /** Its log, to explain a failure. */
  log(): string;
  stop(): Promise<void>;
}

/**
 * PgBouncer in front of a PostgreSQL server (`url`: its admin URL), on a free loopback port, in transaction pooling
 * mode unless told (what many PostgreSQL hosts put in front: a server connection per transaction, so LISTEN and
 * session state do not work through it). It refuses to run as root: then the `postgres` user runs it.
 */
export async function startPgBouncer(url: string, poolMode: 'transaction' | 'session' = 'transaction'): Promise<PgBouncer> {
  if (pgbouncerMissing) throw new Error(pgbouncerMissing);
  const server = new URL(url);
  const dir = mkdtempSync(join(tmpdir(), 'ms-pgbouncer-'));
  const ids =
    process.getuid?.() === 0
      ? { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) }
      : undefined;
  if (ids) chownSync(dir, ids.uid, ids.gid);
  const port = await freePort();
  const logFile = join(dir, 'pgbouncer.log');
  writeFileSync(join(dir, 'users.txt'), `"${server.username}" ""\n`); // trust: the user must still be listed
  writeFileSync(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `* = host=${server.hostname} port=${server.port}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${join(dir, 'users.txt')}`,
      `pool_mode = ${poolMode}`,
      'default_pool_size = 20',
      'max_client_conn = 1000',
      `logfile = ${logFile}`,
      `pidfile = ${join(dir, 'pgbouncer.pid')}`,
      'ignore_startup_parameters = extra_float_digits,options,statement_timeout',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(PGBOUNCER, [join(dir, 'pgbouncer.ini')], { ...ids, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const log = (): string => `${stderr}${existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''}`;
  for (const deadline = Date.now() + 10_000; !(await accepting(port));) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`pgbouncer did not start:\n${log()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    url: (database) => `postgres://${server.username}@127.0.0.1:${port}/${database}`,
    log,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGINT'); // at once, not waiting for clients
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const accepting = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => resolve(socket.end() !== undefined));
    socket.once('error', () => resolve(false));
  });
