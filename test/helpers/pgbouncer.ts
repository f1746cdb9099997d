import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createConnection } from 'node:net';
import { freePort, type PrivatePostgres } from './private-postgres.mjs';

/** Debian's pgbouncer, if installed (.ci/run installs it). */
export const PGBOUNCER = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((p) => existsSync(p));

export interface PgBouncer {
  /** The URL of `database` on the PostgreSQL server, through the bouncer. */
  url(database: string): string;
  /** Its log, to explain a failure. */
  log(): string;
  stop(): Promise<void>;
}

/**
 * PgBouncer in front of a private PostgreSQL, in transaction pooling mode (what many PostgreSQL hosts put in front:
 * a server connection per transaction, so LISTEN and session state do not work through it), on a free loopback port.
 * It refuses to run as root: then it runs as the user PostgreSQL runs as.
 */
export async function startPgBouncer(postgres: PrivatePostgres): Promise<PgBouncer> {
  if (!PGBOUNCER) throw new Error('pgbouncer is not installed (apt-get install pgbouncer)');
  const dir = mkdtempSync(join(tmpdir(), 'ms-pgbouncer-'));
  const port = await freePort();
  const file = (name: string, text: string): string => {
    writeFileSync(join(dir, name), text);
    if (postgres.ids) chownSync(join(dir, name), postgres.ids.uid, postgres.ids.gid);
    return join(dir, name);
  };
  if (postgres.ids) chownSync(dir, postgres.ids.uid, postgres.ids.gid);
  const logFile = file('pgbouncer.log', '');
  const config = file(
    'pgbouncer.ini',
    [
      '[databases]',
      `* = host=127.0.0.1 port=${postgres.port} user=postgres`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust', // the test server trusts loopback too; the user must still be listed
      `auth_file = ${file('users.txt', '"postgres" ""\n')}`,
      'pool_mode = transaction',
      'max_client_conn = 1000',
      'default_pool_size = 20',
      `logfile = ${logFile}`,
      `pidfile = ${join(dir, 'pgbouncer.pid')}`,
      'ignore_startup_parameters = extra_float_digits,options,statement_timeout',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(PGBOUNCER, [config], { ...postgres.ids, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const log = (): string => `${stderr}${existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''}`;
  // Ready once it accepts connections.
  for (const deadline = Date.now() + 10_000; !(await accepts(port)); ) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`pgbouncer did not start:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: (database) => `postgres://postgres@127.0.0.1:${port}/${database}`,
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

const accepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
