import { spawn, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { BIN, cleanEnv } from '../helpers/bin.js';
import { eventually, tempDir } from '../helpers/index.js';

// The image's entrypoint (docker-entrypoint.sh), run as a script on this machine: no Docker engine needed. The
// unprivileged user is `nobody` here (the image's `node` does not exist on the host).
const SCRIPT = join(packageRoot, 'docker-entrypoint.sh');
const USER = 'nobody';
const ids = (flag: '-u' | '-g') => Number(spawnSync('id', [flag, USER], { encoding: 'utf8' }).stdout.trim());
const asRoot = process.getuid?.() === 0;
const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].some((p) => existsSync(p));
const reason = !asRoot ? 'it must start as root to hand a directory over' : !setpriv ? 'no setpriv (apt-get install util-linux)' : '';
if (reason) console.warn(`docker entrypoint test skipped: ${reason}`);

/** Every path under `dir`, itself included, with its owner. */
function owners(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string, name: string) => {
    const s = statSync(p);
    out[name] = `${s.uid}:${s.gid}`;
    if (s.isDirectory()) for (const e of readdirSync(p)) walk(join(p, e), name === '.' ? e : `${name}/${e}`);
  };
  walk(dir, '.');
  return out;
}

function entrypointEnv(dir: string): Record<string, string> {
  return {
    MOLLYSOCKET_USER: USER,
    MOLLYSOCKET_DATA_DIR: dir,
    MOLLY_DB: join(dir, 'mollysocket.db'),
    MOLLY_HOST: '127.0.0.1',
    MOLLY_PORT: '0',
    MOLLY_LOG: 'info',
  };
}

function runScript(args: string[], dir: string, user?: { uid: number; gid: number }) {
  const r = spawnSync('sh', [SCRIPT, ...args], { cwd: dir, env: cleanEnv(entrypointEnv(dir)), encoding: 'utf8', timeout: 20_000, ...user });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(reason !== '')('docker-entrypoint.sh', () => {
  const uid = ids('-u');
  const gid = ids('-g');

  it('started as root on a root-owned volume: hands every file to the user and execs the server as that user, with no capabilities', async () => {
    // A volume as a root image leaves it: root-owned, with a root-only database, key file and a subdirectory.
    const dir = tempDir('ms-entry-');
    mkdirSync(join(dir, 'old'));
    writeFileSync(join(dir, 'old', 'mollysocket.db.bak'), 'x');
    writeFileSync(join(dir, 'mollysocket.db'), '', { mode: 0o600 });
    const kept = spawnSync(process.execPath, [BIN, 'vapid', 'pub'], { cwd: dir, env: cleanEnv(entrypointEnv(dir)), encoding: 'utf8' });
    expect(kept.status).toBe(0);
    expect(statSync(join(dir, 'vapid.key'))).toMatchObject({ uid: 0, mode: 0o100600 });
    expect(statSync(dir).uid).toBe(0);

    const child = spawn('sh', [SCRIPT, 'server'], { cwd: dir, env: cleanEnv(entrypointEnv(dir)) });
    let log = '';
    child.stdout.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    let exitCode: number | null | undefined;
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve((exitCode = code))));
    try {
      await eventually(() => log.includes('web server listening') || exitCode !== undefined, 'the server to listen or exit', 15_000);
      expect(log).toContain('web server listening');
      // The same process (exec, not a child): the node server, with the user's ids and no capabilities.
      const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
      expect(readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')).toEqual(['node', join(packageRoot, 'dist/cli/main.js'), 'server', '']);
      expect(status).toMatch(new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, 'm'));
      expect(status).toMatch(new RegExp(`^Gid:\\s+${gid}\\s+${gid}\\s+${gid}\\s+${gid}$`, 'm'));
      expect(status).toMatch(/^CapEff:\s+0+$/m);
      expect(status).toMatch(/^CapPrm:\s+0+$/m);
      // The server read the root-only key and database it was handed, and created the database's WAL as the user.
      expect(log).not.toMatch(/EACCES|generated a VAPID key/);
      const all = owners(dir);
      expect(Object.keys(all)).toEqual(expect.arrayContaining(['.', 'vapid.key', 'old', 'old/mollysocket.db.bak', 'mollysocket.db', 'mollysocket.db-wal']));
      for (const owner of Object.values(all)) expect(owner).toBe(`${uid}:${gid}`);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('started as the user on a volume that is already right: runs the CLI directly, as that user', () => {
    const dir = tempDir('ms-entry-');
    chownSync(dir, uid, gid);
    writeFileSync(join(dir, 'mollysocket.db'), ''); // commands other than server and connection add need a database
    chownSync(join(dir, 'mollysocket.db'), uid, gid);
    const r = runScript(['vapid', 'pub'], dir, { uid, gid });
    expect(r.stderr).not.toMatch(/not writable|could not hand/);
    expect(r.code).toBe(0);
    // The generated key belongs to whoever ran the CLI.
    expect(statSync(join(dir, 'vapid.key'))).toMatchObject({ uid, gid });
  });

  it('started as the user on a root-owned volume: one line says what to do, and the CLI reports its own failure', () => {
    const dir = tempDir('ms-entry-');
    const r = runScript(['vapid', 'pub'], dir, { uid, gid });
    expect(r.stderr.split('\n')[0]).toBe(
      `mollysocket: ${dir} is not writable by uid ${uid}: start the container as root once (it hands the directory over), or on the host: chown -R ${uid} <the directory mounted on ${dir}>`,
    );
    expect(r.code).not.toBe(0);
    expect(statSync(dir).uid).toBe(0);
  });
});
