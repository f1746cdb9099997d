import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The private PostgreSQL server's admin URL, or why there is none. */
    postgres: { url: string; pid: number } | { missing: string };
  }
}

/** The newest Debian PostgreSQL's binaries, if the package is installed. */
function binDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
  return versions[0] && join(root, versions[0], 'bin');
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

export interface PrivatePostgres {
  /** Admin URL (database `postgres`). */
  url: string;
  /** The postmaster's pid: its children are the server's other processes. */
  pid: number;
  stop(): void;
}

/**
 * Starts a private PostgreSQL on a free loopback port in a temporary directory. PostgreSQL refuses to run as root:
 * then the `postgres` user the package creates runs it. Undefined when the package is not installed.
 */
export async function startPostgres(): Promise<PrivatePostgres | undefined> {
  const bin = binDir();
  if (!bin) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'ms-pg-'));
  let ids: { uid: number; gid: number } | undefined;
  if (process.getuid?.() === 0) {
    ids = { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) };
    chownSync(dir, ids.uid, ids.gid);
    chmodSync(dir, 0o700);
  }
  const run = (tool: string, args: string[]): void => {
    const r = spawnSync(join(bin, tool), args, { ...ids, stdio: 'pipe', cwd: dir });
    if (r.status !== 0) throw new Error(`${tool} failed: ${r.stderr?.toString() ?? r.error?.message}`);
  };
  const data = join(dir, 'data');
  run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
  const port = await freePort();
  const serverOpts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200`;
  run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-o', serverOpts, '-w', 'start']);
  const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    pid,
    stop: () => {
      process.kill(pid, 'SIGCONT'); // in case a test left it frozen
      spawnSync(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], { ...ids, stdio: 'pipe' });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One private PostgreSQL for the whole test run, stopped at its end. */
export default async function setup(project: TestProject): Promise<() => void> {
  const server = await startPostgres();
  if (!server) {
    if (process.env.CI) throw new Error('PostgreSQL is not installed (Debian package postgresql): .ci/run installs it');
    project.provide('postgres', { missing: 'PostgreSQL is not installed (apt-get install postgresql)' });
    return () => {};
  }
  project.provide('postgres', { url: server.url, pid: server.pid });
  return server.stop;
}
