import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The private PostgreSQL server's admin URL, or why there is none. */
    postgres: { url: string; pids: string } | { missing: string };
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

/**
 * Starts a private PostgreSQL on a free loopback port in a temporary directory for the whole test run, and stops it
 * at the end. PostgreSQL refuses to run as root: then the `postgres` user the package creates runs it.
 */
export default async function setup(project: TestProject): Promise<() => void> {
  const bin = binDir();
  if (!bin) {
    if (process.env.CI) throw new Error('PostgreSQL is not installed (Debian package postgresql): .ci/run installs it');
    project.provide('postgres', { missing: 'PostgreSQL is not installed (apt-get install postgresql)' });
    return () => {};
  }
  const dir = mkdtempSync(join(tmpdir(), 'ms-pg-'));
  const asRoot = process.getuid?.() === 0;
  let uid: number | undefined;
  if (asRoot) {
    uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
    chownSync(dir, uid, gid);
    chmodSync(dir, 0o700);
  }
  const run = (tool: string, args: string[]): void => {
    const r = spawnSync(join(bin, tool), args, { ...(uid !== undefined && { uid, gid: uid }), stdio: 'pipe', cwd: dir });
    if (r.status !== 0) throw new Error(`${tool} failed: ${r.stderr?.toString() ?? r.error?.message}`);
  };
  const data = join(dir, 'data');
  run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
  const port = await freePort();
  const serverOpts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200`;
  run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-o', serverOpts, '-w', 'start']);
  const postmasterPid = execFileSync('head', ['-1', join(data, 'postmaster.pid')]).toString().trim();
  project.provide('postgres', { url: `postgres://postgres@127.0.0.1:${port}/postgres`, pids: postmasterPid });
  return () => {
    spawnSync(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], { ...(uid !== undefined && { uid, gid: uid }), stdio: 'pipe' });
    rmSync(dir, { recursive: true, force: true });
  };
}
