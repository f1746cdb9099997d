import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { eventually, tempDir } from '../helpers/index.js';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';

/** Faults through the bin: crashes, shutdowns with pushes owed, a locked, full or deleted database. */

const accounts: Account[] = Array.from({ length: 4 }, (_, i) => ({
  uuid: `6e3b5c1a-5a8e-4b6e-9c3e-00000000000${i}`,
  deviceId: 1,
  password: `password-${i}`,
}));

interface World {
  signal: FakeSignalServer;
  push: FakePushServer;
  dir: string;
  env: Record<string, string>;
  procs: BinProcess[];
}
let world: World | undefined;

async function setUp(dir = tempDir()): Promise<World> {
  const signal = await FakeSignalServer.start({ tls: true });
  const push = await FakePushServer.start();
  for (const a of accounts) signal.addAccount(a);
  const env = {
    MOLLY_PORT: '0',
    MOLLY_DB: join(dir, 'mollysocket.db'),
    MOLLY_SIGNAL_URL: signal.url,
    MOLLY_SIGNAL_CA_FILE: testPki().caFile,
    MOLLY_ALLOWED_ENDPOINTS: JSON.stringify([push.origin]),
  };
  world = { signal, push, dir, env, procs: [] };
  return world;
}

afterEach(async () => {
  if (!world) return;
  for (const p of world.procs) if (p.child.exitCode === null) await p.stop('SIGKILL');
  await world.signal.close();
  await world.push.close();
  world = undefined;
});

function start(w: World): BinProcess {
  const proc = new BinProcess(['server'], { cwd: w.dir, env: w.env });
  w.procs.push(proc);
  return proc;
}

async function register(url: string, a: Account, endpoint: string): Promise<string> {
  const res = await fetch(`${url}/`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ uuid: a.uuid, device_id: a.deviceId, password: a.password, endpoint }),
  });
  return ((await res.json()) as { mollysocket: { status: string } }).mollysocket.status;
}

const tokenOf = (a: Account): string => `token-${a.uuid.slice(-1)}`;
const urgentTokens = (push: FakePushServer, from = 0): string[] =>
  push.requests
    .slice(from)
    .filter((r) => r.body === '{"urgent":true}')
    .map((r) => r.path.replace('/up/', ''))
    .sort();
const allOpen = (w: World): boolean => accounts.every((a) => w.signal.open(a.uuid, a.deviceId).length === 1);

/** A server with every account registered, connected, and its test push delivered. */
async function running(w: World): Promise<{ proc: BinProcess; url: string }> {
  const proc = start(w);
  const url = await proc.url();
  for (const a of accounts) expect(await register(url, a, w.push.endpoint(tokenOf(a)))).toBe('ok');
  await w.signal.until(() => allOpen(w), 'every account connected');
  await w.push.until(() => w.push.requests.length >= accounts.length, 'the test pushes');
  return { proc, url };
}

describe('no wake-up lost to a crash or a shutdown', () => {
  it('after kill -9, sends each connection one wake-up once it is connected again; after a clean stop, none', async () => {
    const w = await setUp();
    const { proc } = await running(w);
    await proc.stop('SIGKILL');

    const sessionsBefore = w.signal.sessions.length;
    const pushesBefore = w.push.requests.length;
    const second = start(w);
    await second.waitFor(/did not end cleanly/);
    await w.signal.until(() => w.signal.sessions.length === sessionsBefore + accounts.length && allOpen(w), 'reconnected');
    await w.push.until(() => urgentTokens(w.push, pushesBefore).length === accounts.length, 'one wake-up each');
    expect(urgentTokens(w.push, pushesBefore)).toEqual(accounts.map(tokenOf).sort());

    expect(await second.stop()).toBe(0);
    const afterClean = w.push.requests.length;
    const third = start(w);
    await w.signal.until(() => allOpen(w) && w.signal.sessions.length === sessionsBefore + 2 * accounts.length, 'reconnected again');
    await new Promise((r) => setTimeout(r, 300));
    expect(w.push.requests.length).toBe(afterClean); // a clean stop owes nothing
    expect(third.stderr).not.toMatch(/did not end cleanly/);
  });

  it('keeps the wake-ups a push server refused at SIGTERM, and sends them after the restart', async () => {
    const w = await setUp();
    const { proc } = await running(w);
    w.push.defaultStatus = 503;
    const before = w.push.requests.length;
    for (const a of accounts) expect(await w.signal.sendEnvelope(w.signal.open(a.uuid, a.deviceId)[0]!)).toEqual({ status: 200, message: 'OK' });
    await w.push.until(() => urgentTokens(w.push, before).length === accounts.length, 'the refused wake-ups');
    expect(await proc.stop()).toBe(0);
    expect(proc.stderr).toMatch(/[A-Z]+: wake-ups not delivered before shutdown: kept in the store, sent at the next start \{.*"count":4/);

    w.push.defaultStatus = 201;
    const restartAt = w.push.requests.length;
    const second = start(w);
    await second.waitFor(/[A-Z]+: sending the wake-ups owed since the last shutdown \{.*"count":4/);
    await w.push.until(() => urgentTokens(w.push, restartAt).length === accounts.length, 'the owed wake-ups');
    expect(urgentTokens(w.push, restartAt)).toEqual(accounts.map(tokenOf).sort());
  });
});

describe('the database under a running server', () => {
  it('keeps acking envelopes while another process holds the write lock, and says so on /health', { timeout: 60_000 }, async () => {
    const w = await setUp();
    const { url } = await running(w);
    // The lock is held until the test lets go: whatever the machine's speed, every ack below happens under it.
    const holder = spawn(
      process.execPath,
      [
        '-e',
        `const db = new (require(${JSON.stringify(join(packageRoot, 'node_modules', 'better-sqlite3'))}))(${JSON.stringify(w.env.MOLLY_DB)});
         db.exec('BEGIN IMMEDIATE'); console.log('locked');
         process.stdin.on('data', () => { db.exec('COMMIT'); console.log('released'); process.exit(0); });`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    let out = '';
    holder.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await eventually(() => out.includes('locked'), 'the lock held', 10_000);

    // A server whose statements waited for the lock (SQLite's busy timeout, 5 s) would ack one envelope every few
    // seconds at best, and these 30 would not fit in the test's time.
    const session = w.signal.open(accounts[0]!.uuid, 1)[0]!;
    for (let i = 0; i < 30; i++) await w.signal.sendEnvelope(session, { urgent: false });
    await eventually(async () => (await fetch(`${url}/health`)).status === 503, 'health saying the store fails', 20_000);
    expect(out).not.toContain('released');

    holder.stdin.write('release\n');
    await eventually(() => out.includes('released'), 'the lock released', 10_000);
    await eventually(async () => (await fetch(`${url}/health`)).status === 200, 'health once the lock is gone', 20_000);
  });

  it('tells the truth when the database file is deleted: 503, registrations refused, and no empty database at the next start', async () => {
    const w = await setUp();
    const { proc, url } = await running(w);
    rmSync(w.env.MOLLY_DB as string);
    expect((await fetch(`${url}/health`)).status).toBe(503);
    const late: Account = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-0000000000ff', deviceId: 1, password: 'late' };
    w.signal.addAccount(late); // Signal accepts it: only the store can refuse it
    expect(await register(url, late, w.push.endpoint('late'))).toBe('internal_error');
    expect(await proc.stop()).toBe(0);

    const again = await runBin(['server'], { cwd: w.dir, env: w.env });
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/mollysocket\.db \(setting "db"\) is missing, but the VAPID key kept beside it .* restore the database from your backup/);
  });
});

/** A small tmpfs, for a disk that fills up. Needs root (CI runs as root); elsewhere it skips. */
const canMount = process.getuid?.() === 0 && spawnSync('unshare', ['--mount', 'true']).status === 0;
if (!canMount && process.env.CI) throw new Error('the full-disk test needs root to mount a tmpfs');
if (!canMount) console.warn('full-disk test skipped: mounting a tmpfs needs root');

describe.skipIf(!canMount)('a full disk', () => {
  let mountPoint: string | undefined;
  afterEach(() => {
    if (mountPoint) spawnSync('umount', ['-l', mountPoint]);
    mountPoint = undefined;
  });

  it('answers internal_error to registrations and 503 on /health while the disk is full, and recovers once there is room', async () => {
    mountPoint = tempDir();
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountPoint], { encoding: 'utf8' });
    expect(mount.stderr).toBe('');
    const dir = join(mountPoint, 'data');
    mkdirSync(dir);
    const w = await setUp(dir);
    const { url } = await running(w);
    const filler = join(mountPoint, 'filler');
    spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k'], { encoding: 'utf8' }); // until the disk is full

    const newcomers = Array.from({ length: 5 }, (_, i) => ({ uuid: `00000000-0000-4000-8000-0000000000a${i}`, deviceId: 1, password: 'x'.repeat(200) }));
    for (const a of newcomers) w.signal.addAccount(a); // Signal accepts them: only the full disk refuses them
    for (const a of newcomers) expect(await register(url, a, w.push.endpoint(`new${a.uuid.slice(-1)}`))).toBe('internal_error');
    expect((await fetch(`${url}/health`)).status).toBe(503);

    rmSync(filler);
    expect(await register(url, newcomers[0]!, w.push.endpoint('new0'))).toBe('ok');
    await eventually(async () => (await fetch(`${url}/health`)).status === 200, 'health with room again', 10_000);
    writeFileSync(join(dir, 'marker'), ''); // the disk takes writes again
  });
});
