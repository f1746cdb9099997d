import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { SqliteStore as Store } from '../../src/store/sqlite.js';
import { FakePushServer } from '../fakes/push-server.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { tempDir, TEST_UUIDS, TEST_VAPID } from '../helpers/index.js';
import { writeMollySocketDb } from '../helpers/mollysocket.js';

/** An operator's commands never harm by accident: the wrong directory, another key, a MollySocket file, MollySocket's ways. */

const [UUID, UUID2] = TEST_UUIDS;
const { priv: PRIV, pub: PUB } = TEST_VAPID;
const OTHER_PRIV = 'q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94';

let push: FakePushServer;
/** A server running on its own database and key, in its own directory. */
let server: BinProcess;
let serverDir: string;
let serverDb: string;

beforeAll(async () => {
  push = await FakePushServer.start();
  serverDir = tempDir('ms-server-');
  serverDb = join(serverDir, 'mollysocket.db');
  server = new BinProcess(['server'], { cwd: serverDir, env: { MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: PRIV, MOLLY_ALLOWED_ENDPOINTS: `[${push.origin}]` } });
  await server.url();
});

afterAll(async () => {
  await server.stop();
  await push.close();
});

const oneLine = (stderr: string): string => {
  const lines = stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  return lines[0] as string;
};

describe('a command run where there is no database', () => {
  it('creates nothing and names the path it looked at and the db setting, exit 2', async () => {
    const scratch = tempDir('ms-scratch-');
    // The commands that need connections; those that need only the key: test/integration/dropin.test.ts.
    const commands = [
      ['connection', 'list'],
      ['status'],
      ['health'],
      ['connection', 'ping', UUID],
      ['connection', 'remove', UUID],
      ['connection', 'enable', UUID],
    ];
    for (const args of commands) {
      const r = await runBin(args, { cwd: scratch });
      expect(r.code, args.join(' ')).toBe(2);
      expect(oneLine(r.stderr)).toBe(
        `mollysocket: no database at ${scratch}/mollysocket.db (db = "./mollysocket.db" from default): ` +
          'run this command where the server keeps its database, or point db, MOLLY_DB or -c at it',
      );
    }
    const viaEnv = await runBin(['status'], { cwd: scratch, env: { MOLLY_DB: 'elsewhere.db' } });
    expect(viaEnv.stderr).toContain('(db = "elsewhere.db" from MOLLY_DB)');
    expect(readdirSync(scratch)).toEqual([]);
    // With the same setting, the commands find the server's database.
    expect(await runBin(['status'], { cwd: scratch, env: { MOLLY_DB: serverDb } })).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/^server: running/),
    });
  });

  it('with the server running and its database file deleted, `connection list` creates nothing and exits 2', async () => {
    const dir = tempDir('ms-deleted-');
    const proc = new BinProcess(['server'], { cwd: dir, env: { MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: PRIV } });
    try {
      await proc.url();
      rmSync(join(dir, 'mollysocket.db'));
      const r = await runBin(['connection', 'list'], { cwd: dir });
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toMatch(/^mollysocket: no database at .*mollysocket\.db/);
      expect(existsSync(join(dir, 'mollysocket.db'))).toBe(false);
    } finally {
      await proc.stop();
    }
  });
});

describe('the VAPID key of a command and of the server', () => {
  const atServer =
    (env: Record<string, string> = {}) =>
    (...args: string[]) =>
      runBin(args, { cwd: tempDir('ms-cli-'), env: { MOLLY_DB: serverDb, MOLLY_ALLOWED_ENDPOINTS: `[${push.origin}]`, ...env } });

  it('must be the same: a command with another key, or none, refuses and says where each came from, exit 2', async () => {
    const none = await atServer()('qr-code', 'airgapped');
    expect(none.code).toBe(2);
    expect(oneLine(none.stderr)).toBe(
      `mollysocket: the server on ${serverDb} signs with VAPID key ${PUB.slice(0, 12)}…, but this command has none ` +
        '(neither vapid_privkey nor vapid_key_file is set, and there is no kept vapid.key): give this command the settings ' +
        'the server has (the same -c file, or vapid_privkey / vapid_key_file)',
    );
    expect(existsSync(join(serverDir, 'vapid.key'))).toBe(false); // never a kept key beside the server's database

    const other = await atServer({ MOLLY_VAPID_PRIVKEY: OTHER_PRIV })('vapid', 'pub');
    expect(other.code).toBe(2);
    expect(oneLine(other.stderr)).toMatch(/this command's key is \S+…, from vapid_privkey \(from MOLLY_VAPID_PRIVKEY\)/);
    const keyFile = join(tempDir(), 'key');
    writeFileSync(keyFile, OTHER_PRIV);
    const fromFile = await atServer({ MOLLY_VAPID_KEY_FILE: keyFile })('connection', 'add', UUID, '1', 'pw', push.endpoint());
    expect(fromFile.code).toBe(2);
    expect(oneLine(fromFile.stderr)).toContain(`from vapid_key_file ${keyFile} (from MOLLY_VAPID_KEY_FILE)`);
    for (const args of [
      ['connection', 'ping', UUID],
      ['vapid', 'test', 'https://push.example/x'],
      ['qr-code', 'url', 'https://m.example/'],
    ]) {
      expect((await atServer({ MOLLY_VAPID_PRIVKEY: OTHER_PRIV })(...args)).code, args.join(' ')).toBe(2);
    }
    expect(await Store.open(serverDb, { mode: 'read' }).list()).toEqual([]); // the refused `connection add` stored nothing

    const same = await atServer({ MOLLY_VAPID_PRIVKEY: PRIV })('qr-code', 'airgapped');
    expect(same.code).toBe(0);
    expect(same.stdout).toContain(`vapid=${PUB}&type=airgapped`);
  });

  it('`config` shows the key in effect and where it came from', async () => {
    const r = await atServer({ MOLLY_VAPID_PRIVKEY: PRIV })('config');
    expect(r.stdout).toContain(`# VAPID public key in effect: ${PUB} (vapid_privkey (from MOLLY_VAPID_PRIVKEY))`);
    expect(r.stdout).toContain(`# database: ${serverDb}\n`);
    const fresh = await runBin(['config'], { cwd: tempDir() });
    expect(fresh.stdout).toMatch(/# database: .*mollysocket\.db \(does not exist\)/);
    expect(fresh.stdout).toContain('# VAPID public key in effect: none yet: the first server start generates one and keeps it in vapid.key');
  });
});

/** A database file exactly as MollySocket 1.7 writes it: one enabled and one forbidden connection. */
const mollySocketDb = (path: string, endpoint: string): void =>
  writeMollySocketDb(path, [
    { uuid: UUID, deviceId: 3, password: 'pw1', endpoint, forbidden: false, lastRegistration: 1700000000 },
    { uuid: UUID2, deviceId: 1, password: 'pw2', endpoint, forbidden: true, lastRegistration: 0 },
  ]);

describe("MollySocket's database file", () => {
  it('is read as it is by read-only commands, and migrated only by the server, once, after keeping a copy', async () => {
    const dir = tempDir('ms-molly-');
    const db = join(dir, 'mollysocket.db');
    mollySocketDb(db, push.endpoint('tok'));
    const before = readFileSync(db);
    const env = { MOLLY_VAPID_PRIVKEY: PRIV, MOLLY_ALLOWED_ENDPOINTS: `[${push.origin}]` };
    const run = (...args: string[]) => runBin(args, { cwd: dir, env });
    const list = await run('connection', 'list', '--json');
    expect(list.code).toBe(0);
    expect((JSON.parse(list.stdout) as { uuid: string; state: string }[]).map((c) => [c.uuid, c.state])).toEqual([
      [UUID2, 'forbidden'],
      [UUID, 'ok'],
    ]);
    for (const args of [['status'], ['test', 'uuid', UUID], ['config'], ['vapid', 'pub'], ['qr-code', 'airgapped'], ['connection', 'ping', UUID]]) {
      expect((await run(...args)).code, args.join(' ')).toBe(0);
    }
    expect((await run('health')).code).toBe(1); // read, and no server running
    expect(readFileSync(db).equals(before)).toBe(true);
    expect(readdirSync(dir)).toEqual(['mollysocket.db']);

    const proc = new BinProcess(['server'], { cwd: dir, env: { ...env, MOLLY_PORT: '0' } });
    await proc.url();
    expect(await proc.stop()).toBe(0);
    const migrated = proc.stderr.split('\n').filter((l) => /migrat/i.test(l));
    expect(migrated).toEqual([expect.stringMatching(/WARN: migrated MollySocket's database .*"backup":".*mollysocket\.db\.mollysocket\.bak"/)]);
    expect(readFileSync(`${db}.mollysocket.bak`).length).toBeGreaterThan(0);
    const copy = new Database(`${db}.mollysocket.bak`, { readonly: true });
    expect(copy.prepare('SELECT uuid, device_id, password, forbidden FROM connections ORDER BY uuid').all()).toEqual([
      { uuid: UUID2, device_id: 1, password: 'pw2', forbidden: 1 },
      { uuid: UUID, device_id: 3, password: 'pw1', forbidden: 0 },
    ]);
    copy.close();
    // The docs name the copy as the program does.
    for (const doc of ['README.md', 'INSTALL.md']) expect(readFileSync(join(packageRoot, doc), 'utf8')).toContain('<db>.mollysocket.bak');
  });
});

describe("MollySocket's environment and command line", () => {
  it('reads MOLLY_* as its compose file writes them: quoted values, bare-word arrays, Production', async () => {
    const dir = tempDir('ms-env-');
    const env = {
      MOLLY_DB: '"mollysocket.db"',
      MOLLY_ALLOWED_UUIDS: '[*]',
      MOLLY_ALLOWED_ENDPOINTS: `[${push.origin},https://other.example]`,
      MOLLY_SIGNAL_ENV: 'Production',
      MOLLY_VAPID_PRIVKEY: `"${PRIV}"`,
    };
    const add = await runBin(['connection', 'add', UUID, '2', 'pw', push.endpoint()], { cwd: dir, env });
    expect(add.code).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['mollysocket.db', 'mollysocket.db-shm', 'mollysocket.db-wal'].filter((f) => existsSync(join(dir, f))));
    expect(readdirSync(dir)).toContain('mollysocket.db'); // not a file named "mollysocket.db" with its quotes
    const config = (await runBin(['config'], { cwd: dir, env })).stdout;
    expect(config).toMatch(/^signal_env = "production" {2}# MOLLY_SIGNAL_ENV$/m);
    expect(config).toMatch(/^allowed_uuids = \[ "\*" \]/m);
    expect(config).toContain(`VAPID public key in effect: ${PUB}`);
  });

  it('starts with an allowed_endpoints entry that is not a URL, warning about it; that entry allows nothing', async () => {
    const dir = tempDir('ms-ep-');
    const proc = new BinProcess(['server'], { cwd: dir, env: { MOLLY_PORT: '0', MOLLY_ALLOWED_ENDPOINTS: '[push.example.org]' } });
    const url = await proc.url();
    const res = await fetch(`${url}/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ uuid: UUID, device_id: 1, password: 'pw', endpoint: 'https://push.example.org/up' }),
    });
    expect(((await res.json()) as { mollysocket: { status: string } }).mollysocket.status).toBe('invalid_endpoint');
    expect(await proc.stop()).toBe(0);
    expect(proc.stderr).toMatch(
      /WARN: config key "allowed_endpoints" has an entry "push\.example\.org" \(from MOLLY_ALLOWED_ENDPOINTS\) that is not "\*" or an http\(s\) URL: it never matches/,
    );
  });

  it("selects a command by MollySocket's prefixes, even where a newer command shares them", async () => {
    const at = (...args: string[]) => runBin(args, { cwd: serverDir, env: { MOLLY_VAPID_PRIVKEY: PRIV } });
    for (const prefix of ['c', 'co', 'con', 'conn']) {
      expect(await at(prefix, 'list'), prefix).toMatchObject({ code: 0, stdout: 'No connection registered yet.\n' });
    }
    for (const args of [
      ['q', 'air'],
      ['qr', 'a'],
      ['qr-code', 'airgapped'],
      ['qrcode', 'airgapped'],
    ]) {
      expect((await at(...args)).stdout, args.join(' ')).toContain(`vapid=${PUB}&type=airgapped`);
    }
    expect((await at('v', 'g')).stdout).toMatch(/^[A-Za-z0-9_-]{43}\n$/);
    expect((await at('t', 'u', UUID)).stdout).toMatch(/is valid/);
    expect((await at('conf')).stdout).toContain('# config file'); // a longer prefix reaches the new command
    expect((await at('st')).stdout).toMatch(/^server: running/);
    const s = new BinProcess(['s'], { cwd: tempDir(), env: { MOLLY_PORT: '0' } }); // `s` is `server`, not `status`
    await s.url();
    expect(await s.stop()).toBe(0);
  });
});

describe('errors that read cleanly', () => {
  it('a group without its subcommand prints its help, exit 2, with no internal message', async () => {
    const r = await runBin(['vapid'], { cwd: tempDir() });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^Usage: mollysocket vapid \[options\] \[command\]/);
    expect(r.stderr).not.toMatch(/outputHelp|mollysocket: /);
  });

  it('an unknown command names the close matches', async () => {
    const r = await runBin(['sever'], { cwd: tempDir() });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe("mollysocket: unknown command 'sever' (did you mean server?) (see `mollysocket --help`)");
  });

  it('a malformed uuid is said not to be a UUID', async () => {
    for (const args of [
      ['connection', 'add', 'not-a-uuid', '1', 'pw', 'https://push.example/x'],
      ['test', 'uuid', 'xyz'],
      ['connection', 'ping', '123'],
    ]) {
      const r = await runBin(args, { cwd: tempDir() });
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toMatch(/is invalid for argument 'uuid'\. it is not a UUID: give the account UUID Molly shows/);
    }
  });

  it('a TOML syntax error names the file, line and column; configuration errors exit 2 from every command', async () => {
    const dir = tempDir();
    const conf = join(dir, 'conf.toml');
    writeFileSync(conf, 'port = 8020\nhost = 127.0.0.1\n');
    for (const args of [['config'], ['server'], ['connection', 'list']]) {
      const r = await runBin(['-c', conf, ...args], { cwd: dir });
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toMatch(new RegExp(`^mollysocket: config file ${conf} is not valid TOML at line 2, column 13: \\S`));
    }
    for (const args of [['config'], ['server']]) {
      const r = await runBin(args, { cwd: dir, env: { MOLLY_SIGNAL_CA_FILE: '/nonexistent/ca.pem', MOLLY_PORT: '0' } });
      expect(r.code, args.join(' ')).toBe(2);
      expect(oneLine(r.stderr)).toMatch(/config key "signal_ca_file" names a file that cannot be read \(ENOENT\)/);
    }
  });

  it('JSON outputs use snake_case keys and unix seconds', async () => {
    const at = (...args: string[]) => runBin(args, { cwd: serverDir, env: { MOLLY_VAPID_PRIVKEY: PRIV } });
    const status = JSON.parse((await at('status', '--json')).stdout) as { server: Record<string, unknown> };
    expect(Object.keys(status.server).sort()).toEqual(['pid', 'running', 'seen_at', 'started_at', 'version']);
    const now = Date.now() / 1000;
    expect(status.server.seen_at).toBeGreaterThan(now - 60);
    expect(status.server.seen_at).toBeLessThan(now + 60);
  });
});
