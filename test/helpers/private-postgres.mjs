// A private PostgreSQL server in a temporary directory, on a free loopback port: for the test run (globalSetup) and
// the cluster benchmark. Plain JavaScript so that both can use it.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The newest Debian PostgreSQL's binaries, if the package is installed. */
function binDir() {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] && join(root, versions[0], 'bin');
}

/** A free TCP port on loopback. */
export const freePort = () =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

/**
 * Starts the server (initdb, then pg_ctl), tuned for tests: no fsync. PostgreSQL refuses to run as root: then the
 * `postgres` user the package creates runs it. Undefined when the package is not installed.
 */
export async function startPostgres() {
  const bin = binDir();
  if (!bin) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'ms-pg-'));
  let ids;
  if (process.getuid?.() === 0) {
    ids = { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) };
    chownSync(dir, ids.uid, ids.gid);
    chmodSync(dir, 0o700);
  }
  const run = (tool, args) => {
    const r = spawnSync(join(bin, tool), args, { ...ids, stdio: 'pipe', cwd: dir });
    if (r.status !== 0) throw new Error(`${tool} failed: ${r.stderr?.toString() ?? r.error?.message}`);
  };
  const data = join(dir, 'data');
  run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
  const port = await freePort();
  const serverOpts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200`;
  run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-o', serverOpts, '-w', 'start']);
  const postmaster = () => Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
  let pid = postmaster();
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    get pid() {
      return pid;
    },
    ids,
    /** `pg_ctl restart -m <mode>`: every session ends (fast: terminated; immediate: cut without a word). */
    restart: (mode = 'fast') =>
      new Promise((resolve, reject) => {
        // Asynchronous, so that the caller's fakes keep answering while PostgreSQL goes down and comes back.
        const args = ['-D', data, '-l', join(dir, 'log'), '-o', serverOpts, '-m', mode, '-w', 'restart'];
        const child = spawn(join(bin, 'pg_ctl'), args, { ...ids, stdio: 'pipe', cwd: dir });
        let err = '';
        child.stderr.on('data', (d) => (err += d));
        child.on('error', reject);
        child.on('exit', (code) => {
          if (code !== 0) return reject(new Error(`pg_ctl restart -m ${mode} failed: ${err}`));
          pid = postmaster();
          resolve();
        });
      }),
    stop: () => {
      process.kill(pid, 'SIGCONT'); // in case it was left frozen
      spawnSync(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], { ...ids, stdio: 'pipe' });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
