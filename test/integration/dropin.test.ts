import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { checkVapid, FakePushServer } from '../fakes/push-server.js';
import { runBin } from '../helpers/bin.js';
import { tempDir, TEST_UUIDS, TEST_VAPID } from '../helpers/index.js';
import { writeMollySocketDb } from '../helpers/mollysocket.js';

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
    const runs = await runEach(keyOnly().map(([args]) => args), { cwd: scratch, env: env(PRIV) });
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
    const commands = [['qr-code', 'airgapped'], ['vapid', 'pub'], ['vapid', 'test', push.endpoint()]];
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
    const refused = await runEach(needKey.map(([args]) => args), { cwd: dir, env: env(OTHER_PRIV) });
    refused.forEach((r, i) => {
      expect(r.code, needKey[i]![0].join(' ')).toBe(2);
      expect(oneLine(r.stderr)).toMatch(new RegExp(`^mollysocket: the server on .*mollysocket\\.db signs with VAPID key ${PUB.slice(0, 12)}…, but this command's key is`));
    });
    const runs = await runEach(keyOnly().map(([args]) => args), { cwd: dir, env: env(PRIV) });
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
    for (const args of [['connection', 'remove', unknown], ['connection', 'remove', UUID, '9'], ['connection', 'enable', unknown], ['connection', 'enable', UUID]]) {
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
