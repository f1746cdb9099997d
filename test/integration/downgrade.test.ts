import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { SqliteStore as Store } from '../../src/store/sqlite.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { TEST_VAPID, tempDir } from '../helpers/index.js';

/*
 * The way back: `mollysocket db downgrade <file>` must write a file that MollySocket 1.7 opens and reads as it
 * does. The statements below are copied from MollySocket's src/db.rs (1.7.1), independently of src/.
 */
const MOLLYSOCKET_CREATE = `
CREATE TABLE IF NOT EXISTS connections(
    uuid TEXT UNIQUE ON CONFLICT REPLACE,
    device_id INTEGER,
    password TEXT,
    endpoint TEXT,
    forbidden BOOLEAN NOT NULL CHECK (forbidden IN (0, 1)),
    last_registration INTEGER
)
            `;
const MOLLYSOCKET_LIST = 'SELECT * FROM connections;';
const MOLLYSOCKET_ADD = `INSERT INTO connections(uuid, device_id, password, endpoint, forbidden, last_registration)
            VALUES (?, ?, ?, ?, ?, ?);`;

/** MollySocket's `Connection::map`: the columns by index; `forbidden` as rusqlite reads a bool (non-zero). */
interface MollySocketConnection {
  uuid: string;
  device_id: number;
  password: string;
  endpoint: string;
  forbidden: boolean;
  last_registration: number;
}
function readAsMollySocket(path: string): MollySocketConnection[] {
  const db = new Database(path, { readonly: true });
  try {
    const rows = db.prepare(MOLLYSOCKET_LIST).raw().all() as unknown[][];
    return rows.map((row) => ({
      uuid: row[0] as string,
      device_id: row[1] as number,
      password: row[2] as string,
      endpoint: row[3] as string,
      forbidden: (row[4] as number) !== 0,
      last_registration: row[5] as number,
    }));
  } finally {
    db.close();
  }
}

/** What MollySocket's CREATE statement makes of a table: columns, types, constraints and its unique index. */
function tableShape(db: Database.Database): unknown {
  const indexes = db.prepare('SELECT name, "unique", origin FROM pragma_index_list(\'connections\')').all() as { name: string }[];
  return {
    columns: db.prepare('SELECT cid, name, type, "notnull", dflt_value, pk FROM pragma_table_info(\'connections\')').all(),
    indexes: indexes.map((i) => ({ ...i, name: undefined, columns: db.prepare('SELECT name FROM pragma_index_info(?)').all(i.name) })),
    check: (db.prepare("SELECT sql FROM sqlite_master WHERE name = 'connections'").get() as { sql: string }).sql
      .replace(/\s+/g, ' ')
      .match(/CHECK \(.*?\)\)/)?.[0],
  };
}

const A = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
const B = '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f';
const C = 'a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d';

/** A user's MollySocket file: made with MollySocket's own statements, user_version 0 as MollySocket leaves it. */
function mollySocketFile(path: string, rows: MollySocketConnection[]): void {
  const db = new Database(path);
  db.exec(MOLLYSOCKET_CREATE);
  const add = db.prepare(MOLLYSOCKET_ADD);
  for (const r of rows) add.run(r.uuid, String(r.device_id), r.password, r.endpoint, r.forbidden ? '1' : '0', String(r.last_registration));
  db.close();
}

const original: MollySocketConnection[] = [
  {
    uuid: A,
    device_id: 2,
    password: 'cGFzc3dvcmQrL3Bhc3N3b3Jk',
    endpoint: 'https://ntfy.example/upAbC?up=1',
    forbidden: false,
    last_registration: 1_760_000_000,
  },
  { uuid: B, device_id: 1, password: 'Zm9yYmlkZGVuLXBhc3N3b3Jk', endpoint: 'https://push.example/up/b', forbidden: true, last_registration: 1_750_000_000 },
  { uuid: C, device_id: 7, password: 'bmV2ZXItcmVnaXN0ZXJlZA==', endpoint: 'https://push.example/up/c', forbidden: false, last_registration: 0 },
];
const byUuid = (rows: MollySocketConnection[]) => [...rows].sort((x, y) => x.uuid.localeCompare(y.uuid));

describe('db downgrade', () => {
  it("MollySocket -> this -> MollySocket: every connection comes back equal, in MollySocket 1.7's exact table", async () => {
    const cwd = tempDir();
    const db = join(cwd, 'mollysocket.db');
    mollySocketFile(db, original);
    await Store.open(db).close(); // this server's migration, as `server` does it

    const r = await runBin(['db', 'downgrade', 'back.db'], { cwd, env: { MOLLY_DB: db } });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Wrote 3 connection(s) to back.db in MollySocket 1.7's format");
    expect(r.stdout).not.toContain('Left out');

    const back = join(cwd, 'back.db');
    expect(byUuid(readAsMollySocket(back))).toEqual(byUuid(original));
    // The copy kept at the migration, under the name INSTALL.md gives, is MollySocket's file as it was.
    expect(byUuid(readAsMollySocket(`${db}.mollysocket.bak`))).toEqual(byUuid(original));
    expect(statSync(back).mode & 0o777).toBe(0o600); // it holds passwords

    const file = new Database(back);
    expect(file.pragma('user_version', { simple: true })).toBe(0);
    expect(file.pragma('journal_mode', { simple: true })).toBe('delete'); // one self-contained file
    const reference = new Database(':memory:');
    reference.exec(MOLLYSOCKET_CREATE);
    expect(tableShape(file)).toEqual(tableShape(reference));
    // MollySocket opening it: its CREATE IF NOT EXISTS is a no-op, and its insert replaces by uuid.
    file.exec(MOLLYSOCKET_CREATE);
    file.prepare(MOLLYSOCKET_ADD).run(A, '3', 'bmV3', 'https://ntfy.example/new', '0', '1770000000');
    expect(file.prepare('SELECT COUNT(*) AS n FROM connections').get()).toEqual({ n: 3 });
    file.close();
    reference.close();
  });

  it('keeps one device per account, says which is left out and why, and what MollySocket cannot know', async () => {
    const cwd = tempDir();
    const db = join(cwd, 'mollysocket.db');
    const store = Store.open(db);
    await store.put({ uuid: A, deviceId: 2, password: 'b2xkLWRldmljZQ==', endpoint: 'https://push.example/up/old' }, 1_750_000_000);
    await store.setForbidden({ uuid: A, deviceId: 2 }, 'signal_403', { password: 'b2xkLWRldmljZQ==' }, 1_755_000_000);
    await store.put({ uuid: A, deviceId: 3, password: 'cmUtbGlua2Vk', endpoint: 'https://push.example/up/new' }, 1_760_000_000);
    await store.put({ uuid: B, deviceId: 1, password: 'Yi1wYXNzd29yZA==', endpoint: 'https://push.example/up/b' }, 1_760_000_000);
    await store.setForbidden({ uuid: B, deviceId: 1 }, 'endpoint_gone', { endpoint: 'https://push.example/up/b' }, 1_761_000_000);
    await store.close();

    const r = await runBin(['db', 'downgrade', 'back.db'], { cwd, env: { MOLLY_DB: db } });
    expect(r.code).toBe(0);
    expect(byUuid(readAsMollySocket(join(cwd, 'back.db')))).toEqual(
      byUuid([
        { uuid: A, device_id: 3, password: 'cmUtbGlua2Vk', endpoint: 'https://push.example/up/new', forbidden: false, last_registration: 1_760_000_000 },
        { uuid: B, device_id: 1, password: 'Yi1wYXNzd29yZA==', endpoint: 'https://push.example/up/b', forbidden: true, last_registration: 1_760_000_000 },
      ]),
    );
    expect(r.stdout).toContain("Wrote 2 connection(s) to back.db in MollySocket 1.7's format (one per account).");
    expect(r.stdout).toMatch(
      new RegExp(`Left out: ${A} device 2 \\(forbidden, .*\\): MollySocket keeps one device per account; device 3 is kept because it is not forbidden\\.`),
    );
    expect(r.stdout).toMatch(new RegExp(`Forbidden: ${B} device 1 stopped because its push endpoint was gone`));
    expect(r.stdout).not.toContain('cmUtbGlua2Vk'); // no password on the screen
  });

  it('says how MollySocket finds the kept VAPID key, which it does not look for by itself', async () => {
    const cwd = tempDir();
    const db = join(cwd, 'mollysocket.db');
    mollySocketFile(db, original);
    writeFileSync(join(cwd, 'vapid.key'), 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI\n', { mode: 0o600 });
    const r = await runBin(['db', 'downgrade', 'back.db'], { cwd, env: { MOLLY_DB: db } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`set vapid_key_file = "${join(cwd, 'vapid.key')}"`);
  });

  it('never overwrites: an existing output file is a usage error naming the argument, and stays as it was', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'back.db'), 'precious');
    const r = await runBin(['db', 'downgrade', 'back.db'], { cwd, env: { MOLLY_DB: join(cwd, 'mollysocket.db') } });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('mollysocket: output-file back.db already exists: downgrade never overwrites a file, name a new one\n');
    expect(readFileSync(join(cwd, 'back.db'), 'utf8')).toBe('precious');
    const missing = await runBin(['db', 'downgrade'], { cwd });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/output-file/);
  });

  it('refuses to downgrade a database that does not exist, instead of writing an empty file', async () => {
    const cwd = tempDir();
    const r = await runBin(['db', 'downgrade', 'back.db'], { cwd, env: { MOLLY_DB: join(cwd, 'nope.db') } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no database at .*nope\.db \(db = ".*nope\.db" from MOLLY_DB\)/);
    expect(existsSync(join(cwd, 'back.db'))).toBe(false);
    expect(existsSync(join(cwd, 'nope.db'))).toBe(false);
  });

  it('refuses while a server runs on the database (writes after the copy would be lost) unless --force, and says "stop this server" only then', async () => {
    const cwd = tempDir();
    const db = join(cwd, 'mollysocket.db');
    mollySocketFile(db, original);
    const idle = await runBin(['db', 'downgrade', 'idle.db'], { cwd });
    expect(idle.code).toBe(0);
    expect(idle.stdout).toContain(`Next: start MollySocket with db = "${join(cwd, 'idle.db')}".`);
    expect(idle.stdout).not.toMatch(/stop/);

    const server = new BinProcess(['server'], { cwd, env: { MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: TEST_VAPID.priv } });
    try {
      await server.url();
      const refused = await runBin(['db', 'downgrade', 'busy.db'], { cwd });
      expect(refused.code).toBe(2);
      expect(refused.stderr).toBe(
        `mollysocket: a server (pid ${server.child.pid}) is running on ${db}: what it writes after the copy would be lost; stop it first, or pass --force to copy anyway\n`,
      );
      expect(existsSync(join(cwd, 'busy.db'))).toBe(false);
      const forced = await runBin(['db', 'downgrade', '--force', 'busy.db'], { cwd });
      expect(forced.code).toBe(0);
      expect(forced.stdout).toContain(`Next: stop a server (pid ${server.child.pid}), and start MollySocket with db = "${join(cwd, 'busy.db')}".`);
    } finally {
      await server.stop();
    }
  }, 60_000);
});
