import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/open.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { type Connection } from '../../src/store/store.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { TEST_VAPID, tempDir } from '../helpers/index.js';
import { freshDatabase, postgresMissing } from '../helpers/postgres.js';

const A = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
const B = '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f';
/** What a copy must keep of a connection: everything but who owns it. */
const kept = (conns: Connection[]) => conns.map(({ owner: _o, epoch: _e, ...rest }) => rest);

describe.skipIf(postgresMissing !== undefined)('read-only commands on PostgreSQL', () => {
  it('change nothing: an empty database is an error (exit 2), and no table is created', async () => {
    const url = await freshDatabase();
    for (const args of [['connection', 'list'], ['status'], ['vapid', 'pub']]) {
      const r = await runBin(args, { cwd: tempDir(), env: { MOLLY_DB: url } });
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(
        /no mollysocket tables in the database postgres:\/\/postgres@127\.0\.0\.1:\d+\/t_\w+ \(setting "db"\): start the server on it first/,
      );
    }
    const { store } = await openStore(url, { mode: 'create' }); // the server would create them
    expect(await store.list()).toEqual([]);
    await store.close();
    expect((await runBin(['connection', 'list'], { cwd: tempDir(), env: { MOLLY_DB: url } })).code).toBe(0);
  });
});

describe.skipIf(postgresMissing !== undefined)('db copy', () => {
  it('moves every connection and the kept VAPID key from a SQLite file to PostgreSQL and back', async () => {
    const cwd = tempDir();
    const file = join(cwd, 'mollysocket.db');
    const store = SqliteStore.open(file);
    await store.put({ uuid: A, deviceId: 1, password: 'pa', endpoint: 'https://push.example/up/a' }, 1_700_000_000);
    await store.put({ uuid: A, deviceId: 2, password: 'pb', endpoint: 'https://push.example/up/b' }, 1_700_000_100);
    await store.put({ uuid: B, deviceId: 1, password: 'pc', endpoint: 'https://push.example/up/c' }, 1_700_000_200);
    await store.setForbidden({ uuid: B, deviceId: 1 }, 'signal_403', { password: 'pc' }, 1_700_000_300);
    const original = await store.list();
    await store.close();
    const pub = (db: string) => runBin(['vapid', 'pub'], { cwd, env: { MOLLY_DB: db } });
    const key = (await pub(file)).stdout.trim(); // the server's kept key beside the file
    expect(key).toMatch(/^[A-Za-z0-9_-]{87}$/);

    const url = await freshDatabase();
    const up = await runBin(['db', 'copy', file, url], { cwd });
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    expect(up.stdout).toMatch(/^Copied 3 connection\(s\) from .*mollysocket.db to postgres:\/\/postgres@127.0.0.1:\d+\/t_\w+\.$/m);
    expect(up.stdout).toMatch(/VAPID key: copied into postgres/);
    const { store: pg } = await openStore(url);
    expect(kept(await pg.list())).toEqual(kept(original));
    await pg.close();
    expect((await pub(url)).stdout.trim()).toBe(key); // every instance on PostgreSQL uses the same key

    const again = await runBin(['db', 'copy', file, url], { cwd });
    expect(again.code).toBe(2);
    expect(again.stderr.trim()).toMatch(/^mollysocket: to postgres:\/\/\S+ already holds 3 connection\(s\): copy into an empty database$/);

    const back = join(tempDir(), 'back.db');
    const down = await runBin(['db', 'copy', url, back], { cwd });
    expect(down.code).toBe(0);
    const copy = SqliteStore.open(back);
    expect(kept(await copy.list())).toEqual(kept(original));
    await copy.close();
    expect(statSync(join(back, '..', 'vapid.key')).mode & 0o777).toBe(0o600);
    expect((await pub(back)).stdout.trim()).toBe(key);
  });

  it('refuses a source that does not exist, with exit 2 and one line', async () => {
    const cwd = tempDir();
    const r = await runBin(['db', 'copy', join(cwd, 'missing.db'), join(cwd, 'to.db')], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/from .*missing.db does not exist/)]);
    expect(existsSync(join(cwd, 'to.db'))).toBe(false);
  });

  it('into a place that already holds another VAPID key: exits 2 naming both public keys and copies nothing, unless --force', async () => {
    const cwd = tempDir();
    const url = await freshDatabase();
    const { store: pg } = await openStore(url, { mode: 'create' });
    await pg.put({ uuid: A, deviceId: 1, password: 'pa', endpoint: 'https://push.example/up/a' }, 1_700_000_000);
    await pg.close();
    const pub = (db: string) => runBin(['vapid', 'pub'], { cwd, env: { MOLLY_DB: db } });
    const sourceKey = (await pub(url)).stdout.trim(); // the key generated into the database
    const dir = tempDir();
    writeFileSync(join(dir, 'vapid.key'), `${TEST_VAPID.priv}\n`, { mode: 0o600 });

    const refused = await runBin(['db', 'copy', url, join(dir, 'back.db')], { cwd });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(`already has another VAPID key (public key ${TEST_VAPID.pub}) than from postgres://`);
    expect(refused.stderr).toContain(`(public key ${sourceKey}): Molly users would have to scan a new code`);
    expect(refused.stdout).toBe('');
    const untouched = SqliteStore.open(join(dir, 'back.db'), { mode: 'read' });
    expect(await untouched.list()).toEqual([]);
    await untouched.close();

    const forced = await runBin(['db', 'copy', '--force', url, join(dir, 'back.db')], { cwd });
    expect(forced.code).toBe(0);
    expect(forced.stdout).toContain(`holds another one (${TEST_VAPID.pub}); it was kept, so Molly users must scan a new code`);
    expect(readFileSync(join(dir, 'vapid.key'), 'utf8').trim()).toBe(TEST_VAPID.priv);
  });
});

describe('db copy from a database a server runs on', () => {
  it('refuses (exit 2, naming the server) unless --force: what the server writes after the copy would be lost', async () => {
    const cwd = tempDir();
    const server = new BinProcess(['server'], { cwd, env: { MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: TEST_VAPID.priv } });
    try {
      await server.url();
      const to = join(tempDir(), 'copy.db');
      const refused = await runBin(['db', 'copy', 'mollysocket.db', to], { cwd });
      expect(refused.code).toBe(2);
      expect(refused.stderr).toBe(
        `mollysocket: a server (pid ${server.child.pid}) is running on ${join(cwd, 'mollysocket.db')}: what it writes after the copy would be lost; stop it first, or pass --force to copy anyway\n`,
      );
      expect((await runBin(['db', 'copy', '--force', 'mollysocket.db', to], { cwd })).code).toBe(0);
    } finally {
      await server.stop();
    }
    const after = join(tempDir(), 'after.db');
    expect((await runBin(['db', 'copy', join(cwd, 'mollysocket.db'), after], { cwd })).code).toBe(0); // stopped: allowed
  }, 60_000);
});
