import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { checkVapid, FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { tempDir, TEST_UUIDS, TEST_VAPID } from '../helpers/index.js';
import { writeMollySocketDb } from '../helpers/mollysocket.js';
import { unitEntries, unitEnvironment } from '../helpers/systemd.js';

/** The seams where a MollySocket user swaps in this program and keeps everything else (issue 20). */

/** Runs the commands one after the other: at once, on a loaded machine, each would take longer than its own time limit. */
async function runEach(commands: string[][], opts: Parameters<typeof runBin>[1]): Promise<Awaited<ReturnType<typeof runBin>>[]> {
  const results = [];
  for (const args of commands) results.push(await runBin(args, opts));
  return results;
}

const [UUID, UUID2] = TEST_UUIDS;
const { priv: PRIV, pub: PUB } = TEST_VAPID;
const OTHER_PRIV = 'q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94';

let push: FakePushServer;
beforeAll(async () => {
  push = await FakePushServer.start();
});
afterAll(async () => {
  await push.close();
});

const oneLine = (stderr: string): string => {
  const lines = stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  return lines[0] as string;
};

describe('commands that need only the key', () => {
  /** Each such command, and what its output must hold when it used the key PRIV. */
  const keyOnly = (): [string[], RegExp][] => [
    [['qr-code', 'airgapped'], new RegExp(`vapid=${PUB}&type=airgapped`)],
    [['qr-code', 'url', 'https://molly.example.org/'], new RegExp(`vapid=${PUB}&url=https%3A%2F%2Fmolly.example.org%2F&type=webserver`)],
    [['qr', 'air'], new RegExp(`vapid=${PUB}&type=airgapped`)],
    [['vapid', 'pub'], new RegExp(`^${PUB}\\n$`)],
    [['vapid', 'test', push.endpoint()], new RegExp(`^vapid t=\\S+, k=${PUB}\\n$`)],
    [['test', 'uuid', UUID], /^UUID \S+ is valid\n {2}No connection is registered with this UUID\.\n$/],
    [['test', 'endpoint', push.endpoint()], /^Endpoint \S+ is valid/],
  ];
  const env = (priv: string) => ({ MOLLY_VAPID_PRIVKEY: priv, MOLLY_ALLOWED_ENDPOINTS: `[${push.origin}]` });

  it('work with MOLLY_VAPID_PRIVKEY and no database, creating nothing', async () => {
    const scratch = tempDir('ms-keyonly-');
    const runs = await runEach(
      keyOnly().map(([args]) => args),
      { cwd: scratch, env: env(PRIV) },
    );
    keyOnly().forEach(([args, out], i) => {
      expect(runs[i], args.join(' ')).toMatchObject({ code: 0, stderr: '', stdout: expect.stringMatching(out) });
    });
    // The header `vapid test` printed is one the push server accepts.
    const header = runs[keyOnly().findIndex(([args]) => args[1] === 'test')]!.stdout.trim();
    expect(checkVapid(header, push.origin, Math.floor(Date.now() / 1000))).toMatchObject({ ok: true });
    expect(readdirSync(scratch)).toEqual([]);
  }, 120_000);

  it('without a key and without a database refuse, creating nothing, exit 2', async () => {
    const scratch = tempDir('ms-keyonly-');
    const commands = [
      ['qr-code', 'airgapped'],
      ['vapid', 'pub'],
      ['vapid', 'test', push.endpoint()],
    ];
    for (const r of await runEach(commands, { cwd: scratch })) {
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toBe(
        `mollysocket: no VAPID key, and no database at ${scratch}/mollysocket.db (db = "./mollysocket.db" from default): ` +
          'set vapid_privkey or vapid_key_file as the server has them, or run this command where the server keeps its database',
      );
    }
    expect(readdirSync(scratch)).toEqual([]);
  }, 120_000);

  it('refuse a key other than the one the server recorded in an existing database, exit 2', async () => {
    const dir = tempDir('ms-keyonly-');
    const store = SqliteStore.open(join(dir, 'mollysocket.db'));
    await store.recordVapidKey(PUB);
    await store.close();
    const needKey = keyOnly().filter(([args]) => args[0] !== 'test');
    const refused = await runEach(
      needKey.map(([args]) => args),
      { cwd: dir, env: env(OTHER_PRIV) },
    );
    refused.forEach((r, i) => {
      expect(r.code, needKey[i]![0].join(' ')).toBe(2);
      expect(oneLine(r.stderr)).toMatch(
        new RegExp(`^mollysocket: the server on .*mollysocket\\.db signs with VAPID key ${PUB.slice(0, 12)}…, but this command's key is`),
      );
    });
    const runs = await runEach(
      keyOnly().map(([args]) => args),
      { cwd: dir, env: env(PRIV) },
    );
    keyOnly().forEach(([args, out], i) => expect(runs[i], args.join(' ')).toMatchObject({ code: 0, stdout: expect.stringMatching(out) }));
    expect(readdirSync(dir).filter((f) => !f.startsWith('mollysocket.db'))).toEqual([]); // no kept key beside it
  }, 120_000);
});

describe('a command that changes nothing', () => {
  it('leaves a MollySocket file as it was: `connection remove` and `enable` of an unknown uuid or device exit 1', async () => {
    const dir = tempDir('ms-unchanged-');
    const db = join(dir, 'mollysocket.db');
    writeMollySocketDb(db, [
      { uuid: UUID, deviceId: 3, password: 'pw1', endpoint: push.endpoint(), forbidden: false, lastRegistration: 1700000000 },
      { uuid: UUID2, deviceId: 1, password: 'pw2', endpoint: push.endpoint(), forbidden: true, lastRegistration: 0 },
    ]);
    const before = readFileSync(db);
    const unknown = '00000000-0000-4000-8000-000000000000';
    for (const args of [
      ['connection', 'remove', unknown],
      ['connection', 'remove', UUID, '9'],
      ['connection', 'enable', unknown],
      ['connection', 'enable', UUID],
    ]) {
      const r = await runBin(args, { cwd: dir });
      expect(r.code, args.join(' ')).toBe(args.includes('enable') && args.includes(UUID) ? 0 : 1);
      expect(readFileSync(db).equals(before), args.join(' ')).toBe(true);
      expect(readdirSync(dir), args.join(' ')).toEqual(['mollysocket.db']); // no copy kept either: nothing was migrated
    }
    expect((await runBin(['connection', 'enable', UUID], { cwd: dir })).stdout).toBe(`${UUID} device 3 is enabled already.\n`);
    // A remove that finds its row migrates (keeping the copy) and removes it.
    const removed = await runBin(['connection', 'remove', UUID2], { cwd: dir });
    expect(removed).toMatchObject({ code: 0, stdout: expect.stringMatching(/^Removed 1 connection of/) });
    expect(readdirSync(dir)).toContain('mollysocket.db.mollysocket.bak');
  }, 120_000);
});

describe('an environment value MollySocket refuses', () => {
  it("stops the server at start, one line naming the variable, exit 2, nothing created: MOLLY_ALLOWED_UUIDS=['<uuid>']", async () => {
    const dir = tempDir('ms-env-');
    const r = await runBin(['server'], { cwd: dir, env: { MOLLY_PORT: '0', MOLLY_ALLOWED_UUIDS: `['${UUID}']` } });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      `mollysocket: environment variable MOLLY_ALLOWED_UUIDS does not parse: '…' quotes exactly one character, and the one ` +
        `opened at character 2 goes on: write text as "…" (got "['${UUID}']")`,
    );
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe("MollySocket's systemd layout", () => {
  it("the server runs on it unchanged: conf.toml's db, the credential vapid.key, the connections of its ms.db", async () => {
    const signal = await FakeSignalServer.start({ tls: true });
    try {
      const account = { uuid: UUID, deviceId: 3, password: 'secret+/pw==' };
      signal.addAccount(account);
      // /etc/mollysocket and /var/lib/mollysocket as MollySocket 1.7.1's units leave them, under a scratch root.
      const root = tempDir('ms-layout-');
      const etc = join(root, 'etc/mollysocket');
      const state = join(root, 'var/lib/mollysocket');
      const credentials = join(root, 'run/credentials/mollysocket.service'); // what systemd decrypted
      for (const dir of [etc, state, credentials]) mkdirSync(dir, { recursive: true });
      writeFileSync(join(etc, 'conf.toml'), `db = '${state}/ms.db'\n`); // the line its vapid unit writes
      writeFileSync(join(credentials, 'vapid.key'), `${PRIV}\n`);
      writeMollySocketDb(join(state, 'ms.db'), [{ ...account, endpoint: push.endpoint(), forbidden: false, lastRegistration: 1700000000 }]);

      // The environment our mollysocket.service gives, its paths moved under the scratch root.
      const unitEnv = Object.fromEntries(
        Object.entries(unitEnvironment(unitEntries('mollysocket.service'))).map(([k, v]) => [k, v.replace('/etc/mollysocket', etc).replace('%d', credentials)]),
      );
      expect(Object.keys(unitEnv)).toEqual(expect.arrayContaining(['MOLLY_CONF', 'MOLLY_VAPID_KEY_FILE']));
      const test = { MOLLY_PORT: '0', MOLLY_SIGNAL_URL: signal.url, MOLLY_SIGNAL_CA_FILE: testPki().caFile, MOLLY_ALLOWED_ENDPOINTS: `[${push.origin}]` };
      const server = new BinProcess(['server'], { cwd: state, env: { ...unitEnv, CREDENTIALS_DIRECTORY: credentials, ...test } });
      try {
        await signal.until(() => signal.open(UUID, 3).length === 1, 'the MollySocket connection');
      } finally {
        expect(await server.stop()).toBe(0);
      }
      const store = SqliteStore.open(join(state, 'ms.db'), { mode: 'read' });
      expect(await store.recordedVapidKey()).toBe(PUB); // it signed with the credential's key
      await store.close();

      // A command given only MOLLY_CONF and the credential (INSTALL.md's way) finds the same key and database.
      const cli = { MOLLY_CONF: join(etc, 'conf.toml'), CREDENTIALS_DIRECTORY: credentials };
      expect(await runBin(['vapid', 'pub'], { cwd: root, env: cli })).toMatchObject({ code: 0, stdout: `${PUB}\n` });
      expect((await runBin(['config'], { cwd: root, env: cli })).stdout).toContain(
        `# VAPID public key in effect: ${PUB} (vapid_key_file ${credentials}/vapid.key (from CREDENTIALS_DIRECTORY))`,
      );
      expect((await runBin(['connection', 'list', '--json'], { cwd: root, env: cli })).stdout).toContain(`"uuid": "${UUID}"`);
    } finally {
      await signal.close();
    }
  }, 120_000);
});
