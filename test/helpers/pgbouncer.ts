import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PGBOUNCER = '/usr/sbin/pgbouncer';
export const pgbouncerMissing = existsSync(PGBOUNCER) ? undefined : 'PgBouncer is not installed (apt-get install pgbouncer)';

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

const accepting = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => resolve(socket.end() !== undefined));
    socket.once('error', () => resolve(false));
  });

/**
 * PgBouncer in front of a PostgreSQL server (`url`: its admin URL), in transaction pooling mode unless told: the
 * URL of the same database through it. It refuses to run as root: then the `postgres` user runs it.
 */
export async function startPgBouncer(url: string, poolMode: 'transaction' | 'session' = 'transaction'): Promise<{ url: (database: string) => string; stop(): void }> {
  const server = new URL(url);
  const dir = mkdtempSync(join(tmpdir(), 'ms-pgb-'));
  const ids = process.getuid?.() === 0 ? { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) } : undefined;
  if (ids) chownSync(dir, ids.uid, ids.gid);
  const port = await freePort();
  writeFileSync(join(dir, 'users.txt'), `"${server.username}" ""\n`);
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
      'default_pool_size = 5',
      'max_client_conn = 200',
      `logfile = ${join(dir, 'log')}`,
      'ignore_startup_parameters = extra_float_digits',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(PGBOUNCER, [join(dir, 'pgbouncer.ini')], { ...ids, stdio: 'ignore' });
  for (let i = 0; i < 200 && !(await accepting(port)); i++) await new Promise((r) => setTimeout(r, 25));
  return {
    url: (database) => `postgres://${server.username}@127.0.0.1:${port}/${database}`,
    stop: () => {
      child.kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
