import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { parse as parseToml } from 'smol-toml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteStore as Store } from '../../src/store/sqlite.js';
import { checkVapid, FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { eventually, tempDir, TEST_UUIDS, TEST_VAPID } from '../helpers/index.js';
import { writeMollySocketDb } from '../helpers/mollysocket.js';

const [UUID, UUID2] = TEST_UUIDS;
const { priv: PRIV, pub: PUB } = TEST_VAPID;
const PASSWORD = 'c2VjcmV0K3Bhc3N3b3JkLz0=';

let push: FakePushServer;
beforeAll(async () => {
  push = await FakePushServer.start();
});
afterAll(async () => {
  await push.close();
});

/** A working directory whose configuration allows the fake push server. */
function workdir(extra: Record<string, string> = {}) {
  const cwd = tempDir();
  const env = { MOLLY_ALLOWED_ENDPOINTS: `["${push.origin}"]`, ...extra };
  const run = (...args: string[]) => runBin(args, { cwd, env });
  const db = join(cwd, 'mollysocket.db');
  /** An empty database, as a server leaves it before anyone registers (without a recorded key). */
  const createDb = () => Store.open(db).close();
  return { cwd, env, run, db, createDb };
}

/** A database file exactly as MollySocket (Rust) writes it: one enabled and one forbidden connection. */
const mollySocketDb = (path: string, endpoint: string): void =>
  writeMollySocketDb(path, [
    { uuid: UUID, deviceId: 3, password: PASSWORD, endpoint, forbidden: false, lastRegistration: 1700000000 },
    { uuid: UUID2, deviceId: 1, password: 'pw2', endpoint, forbidden: true, lastRegistration: 0 },
  ]);

describe('connection add', () => {
  it('stores the connection and sends a signed test push with the kept key', async () => {
    const w = workdir();
    const before = push.requests.length;
    const r = await w.run('connection', 'add', UUID, '2', PASSWORD, push.endpoint('cli-add'));
    expect(r.stderr).toMatch(/generated a VAPID key/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Connection for 6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e device 2 added/);
    expect(r.stdout).toMatch(/test push .*: delivered \(201\)/);
    const sent = push.requests[before]!;
    expect(sent).toMatchObject({ path: '/up/cli-add', body: '{"test":true}' });
    const pub = (await runBin(['vapid', 'pub'], { cwd: w.cwd, env: w.env })).stdout.trim();
    expect(sent.vapid).toMatchObject({ ok: true, publicKey: pub });
    const store = Store.open(w.db);
    expect(await store.get({ uuid: UUID, deviceId: 2 })).toMatchObject({ password: PASSWORD, endpoint: push.endpoint('cli-add'), forbidden: false });
    await store.close();
  });

  it('stores the uuid lower-case and finds it in either spelling', async () => {
    const w = workdir();
    expect((await w.run('connection', 'add', UUID.toUpperCase(), '2', PASSWORD, push.endpoint())).code).toBe(0);
    expect((await w.run('connection', 'add', UUID, '2', PASSWORD, push.endpoint())).code).toBe(0);
    const store = Store.open(w.db);
    expect((await store.list()).map((c) => c.uuid)).toEqual([UUID]);
    await store.close();
    expect((await w.run('connection', 'remove', UUID.toUpperCase())).stdout).toMatch(/Removed 1 connection of 6e3b5c1a/);
  });

  it('refuses a bad device id, a uuid not allowed and an endpoint not allowed, with exit 2 and one line each', async () => {
    const w = workdir({ MOLLY_ALLOWED_UUIDS: `${UUID2}, ${UUID.replace('6e3b', '7e3b')}` }); // comma-separated list
    const bad = [
      [await w.run('connection', 'add', UUID2, 'zero', PASSWORD, push.endpoint()), /argument 'device_id'.*whole number from 1/],
      [await w.run('connection', 'add', UUID2, '0', PASSWORD, push.endpoint()), /argument 'device_id'/],
      [await w.run('connection', 'add', UUID, '1', PASSWORD, push.endpoint()), /uuid .* is not allowed.*allowed_uuids/],
      [await w.run('connection', 'add', UUID2, '1', PASSWORD, 'https://elsewhere.example/up'), /endpoint is not allowed: not in allowed_endpoints/],
      [await w.run('connection', 'add', UUID2, '1', PASSWORD), /missing required argument 'endpoint'.*connection add --help/],
    ] as const;
    for (const [r, message] of bad) {
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(message)]);
    }
    expect(existsSync(w.db) ? await Store.open(w.db).list() : []).toEqual([]);
  });

  it('exits 1 when the test push is not delivered, keeping the connection', async () => {
    const w = workdir();
    push.script.push({ status: 500 });
    const r = await w.run('connection', 'add', UUID, '1', PASSWORD, push.endpoint());
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/failed: HTTP 500/);
    expect(r.stderr).toMatch(/stored, but the test push was not delivered/);
    expect((await w.run('connection', 'list')).stdout).toContain(UUID);
  });

  it('is picked up by a running server without a restart', async () => {
    const signal = await FakeSignalServer.start({ tls: true });
    const w = workdir({ MOLLY_PORT: '0', MOLLY_SIGNAL_URL: signal.url, MOLLY_SIGNAL_CA_FILE: testPki().caFile });
    const server = new BinProcess(['server'], { cwd: w.cwd, env: w.env });
    try {
      await server.url();
      signal.addAccount({ uuid: UUID, deviceId: 4, password: PASSWORD });
      expect((await w.run('connection', 'add', UUID, '4', PASSWORD, push.endpoint())).code).toBe(0);
      await signal.until(() => signal.open(UUID, 4).length === 1, 'the server to connect the added device', 8_000);

      const status = await w.run('status');
      expect(status.stdout).toMatch(/^server: running \(pid \d+/m);
      const connectedRow = new RegExp(`^${UUID}\\s+4\\s+connected\\s+socket open`, 'm');
      await eventually(async () => connectedRow.test((await w.run('status')).stdout), 'status to show the connection', 12_000, 500);

      expect((await w.run('connection', 'remove', UUID, '4')).code).toBe(0);
      await signal.until(() => signal.events.includes(`close ${UUID}.4 1000`), 'the server to close the removed device', 8_000);
    } finally {
      expect(await server.stop()).toBe(0);
      await signal.close();
    }
    expect((await w.run('status')).stdout).toMatch(/^server: not running/m);
  });
});

describe('connection list, remove, ping, enable on a MollySocket database', () => {
  it('works with every command, never printing a password or an endpoint token', async () => {
    const w = workdir();
    mollySocketDb(w.db, push.endpoint('secret-token'));

    const list = await w.run('connection', 'list');
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^UUID\s+DEVICE\s+STATE\s+ENDPOINT\s+LAST REGISTRATION$/m);
    expect(list.stdout).toMatch(new RegExp(`^${UUID}\\s+3\\s+ok\\s+${push.origin}\\s+2023-11-14 22:13:20Z$`, 'm'));
    expect(list.stdout).toMatch(new RegExp(`^${UUID2}\\s+1\\s+forbidden: copied from MollySocket as forbidden\\s+.*never$`, 'm'));
    for (const out of [list.stdout, (await w.run('connection', 'list', '--json')).stdout, (await w.run('status')).stdout]) {
      expect(out).not.toContain(PASSWORD);
      expect(out).not.toContain('secret-token');
    }
    const masked = (await w.run('connection', 'list', '-a')).stdout;
    expect(masked).not.toContain(UUID);
    expect(masked).toContain('6e3b****-****-****-****-************');
    const json = JSON.parse((await w.run('conn', 'li', '--json')).stdout) as Record<string, unknown>[];
    expect(json).toEqual([
      {
        uuid: UUID2,
        device_id: 1,
        state: 'forbidden',
        forbidden_reason: 'forbidden_in_mollysocket',
        forbidden_at: null,
        endpoint_origin: push.origin,
        last_registration: null,
      },
      { uuid: UUID, device_id: 3, state: 'ok', forbidden_reason: null, forbidden_at: null, endpoint_origin: push.origin, last_registration: 1700000000 },
    ]);

    const before = push.requests.length;
    const ping = await w.run('connection', 'ping', UUID);
    expect(ping.code).toBe(0);
    expect(ping.stdout).toMatch(/delivered/);
    expect(push.requests.slice(before).map((r) => [r.path, r.body])).toEqual([['/up/secret-token', '{"test":true}']]);
    expect((await w.run('connection', 'ping', '00000000-0000-4000-8000-000000000000')).code).toBe(1);

    expect((await w.run('test', 'uuid', UUID2)).stdout).toMatch(/Device 1: forbidden/);
    const enable = await w.run('connection', 'enable', UUID2);
    expect(enable.code).toBe(0);
    expect((await w.run('test', 'uuid', UUID2)).stdout).toMatch(/Device 1: registered and enabled/);

    expect((await w.run('connection', 'remove', UUID, '9')).code).toBe(1); // no such device
    const removed = await w.run('connection', 'remove', UUID);
    expect(removed.code).toBe(0);
    expect(removed.stdout).toMatch(/Removed 1 connection of/);
    expect((await w.run('connection', 'list')).stdout).not.toContain(UUID);
    expect((await w.run('status')).stdout).toMatch(new RegExp(`^${UUID2}\\s+1\\s+stopped\\s+the server is not running`, 'm'));
  }, 60_000);
});

describe('status and connection list', () => {
  it('say why in words, and when a connection in backoff tries next; --json keeps the codes', async () => {
    const signal = await FakeSignalServer.start({ tls: true });
    const w = workdir({ MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: PRIV, MOLLY_SIGNAL_URL: signal.url, MOLLY_SIGNAL_CA_FILE: testPki().caFile });
    const store = Store.open(w.db);
    const [retrying, refused, gone] = [UUID, UUID2, '0b6c2f4e-8d1a-4c3b-9e5f-000000000000'];
    for (const uuid of [retrying, refused, gone]) await store.put({ uuid, deviceId: 1, password: 'pw', endpoint: push.endpoint() }, 1_700_000_000);
    await store.setForbidden({ uuid: refused, deviceId: 1 }, 'signal_403', { password: 'pw' }, 1_700_000_100);
    await store.setForbidden({ uuid: gone, deviceId: 1 }, 'endpoint_gone', { endpoint: push.endpoint() }, 1_700_000_200);
    await store.close();
    for (let i = 0; i < 30; i++) signal.refusals.push({ status: 503 }); // Signal down for the one enabled connection
    const server = new BinProcess(['server'], { cwd: w.cwd, env: w.env });
    try {
      await server.url();
      const backoffRow = new RegExp(
        `^${retrying}\\s+1\\s+backoff\\s+Signal answered 503 to the connection\\s+\\S+ \\S+Z\\s+(\\S+ \\S+Z) \\((in \\d+ s|now)\\)$`,
        'm',
      );
      let status = '';
      await eventually(async () => backoffRow.test((status = (await w.run('status')).stdout)), 'status to show the backoff', 15_000, 200);
      expect(status).toMatch(/^UUID\s+DEVICE\s+STATE\s+REASON\s+SINCE\s+NEXT TRY$/m);
      expect(status).toMatch(new RegExp(`^${refused}\\s+1\\s+forbidden\\s+Signal refused the credentials \\(403\\)\\s+\\S+ \\S+Z\\s*$`, 'm'));
      expect(status).toMatch(new RegExp(`^${gone}\\s+1\\s+forbidden\\s+the push server said the endpoint is gone \\(404 or 410\\)`, 'm'));

      const json = JSON.parse((await w.run('status', '--json')).stdout) as {
        connections: { uuid: string; state: string; reason: string; since: number; retry_at: number | null }[];
      };
      const byUuid = new Map(json.connections.map((c) => [c.uuid, c]));
      expect(byUuid.get(refused)).toMatchObject({ state: 'forbidden', reason: 'signal_403', retry_at: null });
      expect(byUuid.get(gone)).toMatchObject({ state: 'forbidden', reason: 'endpoint_gone' });
      const r = byUuid.get(retrying)!;
      if (r.state === 'backoff') {
        expect(r.reason).toBe('upgrade answered 503');
        expect(r.retry_at).toBeGreaterThanOrEqual(r.since);
      }

      let list = '';
      const listRow = new RegExp(
        `^${retrying}\\s+1\\s+ok, reconnecting: Signal answered 503 to the connection; next try \\S+ \\S+Z \\((in \\d+ s|now)\\)\\s+${push.origin}`,
        'm',
      );
      await eventually(async () => listRow.test((list = (await w.run('connection', 'list')).stdout)), 'connection list to show the backoff', 15_000, 200);
      expect(list).toMatch(new RegExp(`^${refused}\\s+1\\s+forbidden: Signal refused the credentials \\(403\\)\\s+${push.origin}`, 'm'));
      const listed = JSON.parse((await w.run('connection', 'list', '--json')).stdout) as { uuid: string; forbidden_reason: string | null }[];
      expect(listed.find((c) => c.uuid === gone)?.forbidden_reason).toBe('endpoint_gone');
    } finally {
      expect(await server.stop()).toBe(0);
      await signal.close();
    }
  }, 60_000);
});

describe('test endpoint and test uuid', () => {
  it('gives a verdict, with a non-zero exit when not valid', async () => {
    const w = workdir({ MOLLY_ALLOWED_UUIDS: `["${UUID}"]` });
    await w.createDb();
    const ok = await w.run('test', 'endpoint', push.endpoint());
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/is valid \(pushed to 127\.0\.0\.1\)/);
    const refused = await w.run('test', 'endpoint', 'http://localhost:1/up');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/is not valid: not in allowed_endpoints/);
    const loopback = await runBin(['test', 'endpoint', 'http://127.0.0.1:9/up'], { cwd: w.cwd }); // default "*"
    expect(loopback.code).toBe(1);
    expect(loopback.stderr).toMatch(/127\.0\.0\.1 is an address that is not globally routable/);

    expect(await w.run('test', 'uuid', UUID)).toMatchObject({ code: 0, stdout: expect.stringMatching(/is valid\n {2}No connection is registered/) });
    expect(await w.run('test', 'uuid', UUID2)).toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/is not allowed: it must be an account UUID allowed by allowed_uuids/),
    });
  });
});

describe('vapid', () => {
  it('pub prints the public key of the configured key; test prints a header valid for the endpoint origin', async () => {
    const w = workdir({ MOLLY_VAPID_PRIVKEY: PRIV });
    await w.createDb();
    expect((await w.run('vapid', 'pub')).stdout).toBe(`${PUB}\n`);
    const header = (await w.run('vapid', 'test', 'https://push.example:8443/up/abc')).stdout.trim();
    expect(checkVapid(header, 'https://push.example:8443', Math.floor(Date.now() / 1000))).toMatchObject({ ok: true, publicKey: PUB });
    expect((await w.run('vapid', 'test', 'not a url')).code).toBe(2);
  });

  it('pub keeps a generated key that the server then uses', async () => {
    const w = workdir();
    await w.createDb();
    const pub = (await w.run('vapid', 'pub')).stdout.trim();
    expect(pub).toMatch(/^[A-Za-z0-9_-]{87}$/);
    expect(existsSync(join(w.cwd, 'vapid.key'))).toBe(true);
    expect((await w.run('vapid', 'pub')).stdout.trim()).toBe(pub);
    const server = new BinProcess(['server'], { cwd: w.cwd, env: { ...w.env, MOLLY_PORT: '0' } });
    await server.url();
    expect(await server.stop()).toBe(0);
    expect(await Store.open(w.db, { mode: 'read' }).recordedVapidKey()).toBe(pub);
  });

  it('names the setting when the key is wrong', async () => {
    const w = workdir({ MOLLY_VAPID_PRIVKEY: 'tooshort' });
    const r = await w.run('vapid', 'pub');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/"vapid_privkey" must be 43 characters/);
  });
});

describe('qr-code', () => {
  it('draws the link for a URL and for air-gapped mode with block characters', async () => {
    const w = workdir({ MOLLY_VAPID_PRIVKEY: PRIV });
    await w.createDb();
    const url = await w.run('qr-code', 'url', 'https://molly.example.org/push/');
    expect(url.code).toBe(0);
    expect(url.stdout).toMatch(/[█▀▄]/);
    expect(url.stdout).toContain(`mollysocket://link?vapid=${PUB}&url=https%3A%2F%2Fmolly.example.org%2Fpush%2F&type=webserver`);
    const airgapped = await w.run('qr', 'air');
    expect(airgapped.stdout).toContain(`mollysocket://link?vapid=${PUB}&type=airgapped`);
    const http = await w.run('qrcode', 'url', 'http://molly.example.org/');
    expect(http.code).toBe(2);
    expect(http.stderr).toMatch(/must be an https URL/);
  });
});

describe('config', () => {
  it('prints the effective configuration, secrets redacted, with the source of each value', async () => {
    const w = workdir({ MOLLY_VAPID_PRIVKEY: PRIV, MOLLY_PORT: '9999' });
    const file = join(w.cwd, 'mollysocket.toml');
    writeFileSync(file, 'host = "0.0.0.0"\n');
    const r = await w.run('config');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('# config file: ./mollysocket.toml');
    expect(r.stdout).toMatch(/^host = "0\.0\.0\.0" {2}# \.\/mollysocket\.toml$/m);
    expect(r.stdout).toMatch(/^port = 9999 {2}# MOLLY_PORT$/m);
    expect(r.stdout).toMatch(/^# vapid_privkey = "\.\.\." {2}# MOLLY_VAPID_PRIVKEY: set, not printed$/m);
    expect(r.stdout).toMatch(/^db = "\.\/mollysocket\.db" {2}# default$/m);
    expect(r.stdout).not.toContain(PRIV);
  });

  it('prints valid TOML that loads back as the same configuration (unset keys and secrets as comments)', async () => {
    const w = workdir({
      MOLLY_VAPID_PRIVKEY: PRIV,
      MOLLY_PORT: '9999',
      MOLLY_TRUST_PROXY: '["10.0.0.0/8", "192.168.1.2"]',
      MOLLY_ALLOWED_UUIDS: `[${UUID}]`,
      MOLLY_SIGNAL_ENV: 'Staging',
      MOLLY_URL: 'https://molly.example/push/',
    });
    const printed = (await w.run('config')).stdout;
    const parsed = parseToml(printed); // throws on anything that is not TOML
    expect(parsed).toMatchObject({ port: 9999, trust_proxy: ['10.0.0.0/8', '192.168.1.2'], allowed_uuids: [UUID], signal_env: 'staging' });
    expect(parsed).not.toHaveProperty('vapid_privkey');
    expect(printed).toMatch(/^# metrics_port = \(unset\) {2}# default$/m);

    const file = join(tempDir(), 'pasted.toml');
    writeFileSync(file, printed);
    const again = await runBin(['-c', file, 'config'], { cwd: tempDir() });
    expect(again.stderr).toBe('');
    const lines = (out: string) =>
      out
        .split('\n')
        .filter((l) => /^[a-z_]+ = /.test(l))
        .map((l) => l.replace(/ {2}# .*$/, ''));
    expect(lines(again.stdout)).toEqual(lines(printed));
    expect(again.stdout).toMatch(/^port = 9999 {2}# .*pasted\.toml$/m);
  });

  it('never prints the password of a PostgreSQL URL in db', async () => {
    const w = workdir({ MOLLY_DB: 'postgres://relay:s3cret-pw@db.example.org:5432/molly' });
    const r = await w.run('config');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^db = "postgres:\/\/relay:\*\*\*@db\.example\.org:5432\/molly" {2}# MOLLY_DB: the password is not printed$/m);
    expect(r.stdout).toMatch(/^# database: postgres:\/\/relay:\*\*\*@db\.example\.org:5432\/molly \(PostgreSQL, shared by several instances\)$/m);
    expect(r.stdout).not.toContain('s3cret-pw');
  });

  it('warns about an unknown key by name, and stops on a wrong value with exit 2', async () => {
    const w = workdir();
    writeFileSync(join(w.cwd, 'mollysocket.toml'), 'prot = 1\n');
    const r = await w.run('config');
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/warning: unknown config key "prot"/);
    writeFileSync(join(w.cwd, 'mollysocket.toml'), 'port = "x"\n');
    expect(await w.run('config')).toMatchObject({ code: 2, stderr: expect.stringMatching(/"port" must be an integer/) });
    expect(await runBin(['-c', '/nonexistent.toml', 'config'], { cwd: w.cwd })).toMatchObject({ code: 2, stderr: expect.stringMatching(/does not exist/) });
  });
});

describe('global options', () => {
  it('has --help on every command', async () => {
    for (const args of [
      ['connection', '--help'],
      ['connection', 'add', '--help'],
      ['test', 'endpoint', '--help'],
      ['qr-code', '--help'],
      ['qrcode', '--help'],
      ['status', '--help'],
    ]) {
      const r = await runBin(args, { cwd: tempDir() });
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout).toMatch(/^Usage: mollysocket /);
    }
  });

  it('takes the log level from MOLLY_LOG, or RUST_LOG as MollySocket guides say', async () => {
    for (const env of [{ MOLLY_LOG: 'debug' }, { MOLLY_LOG: '', RUST_LOG: 'mollysocket=debug,warn' }] as Record<string, string>[]) {
      const server = new BinProcess(['server'], { cwd: tempDir(), env: { ...env, MOLLY_PORT: '0' } });
      await server.waitFor(/ DEBUG: configuration /);
      expect(await server.stop()).toBe(0);
    }
    const cwd = tempDir();
    const quiet = new BinProcess(['server'], { cwd, env: { MOLLY_LOG: 'warn', MOLLY_PORT: '0' } });
    await eventually(async () => /^server: running/.test((await runBin(['status'], { cwd })).stdout), 'the server to run', 10_000, 100);
    expect(await quiet.stop()).toBe(0);
    expect(quiet.stderr).not.toMatch(/web server listening/);
  });

  it('reads the configuration from MOLLY_CONF', async () => {
    const cwd = tempDir();
    await Store.open(join(cwd, 'mollysocket.db')).close();
    const conf = join(cwd, 'elsewhere.toml');
    writeFileSync(conf, `vapid_privkey = "${PRIV}"\n`);
    expect((await runBin(['vapid', 'pub'], { cwd, env: { MOLLY_CONF: conf } })).stdout).toBe(`${PUB}\n`);
    expect(readFileSync(conf, 'utf8')).toContain(PRIV);
  });
});
