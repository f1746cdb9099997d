import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { Store } from '../../src/store.js';
import { tempDir } from '../helpers/index.js';

const UUID = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
const UUID2 = '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f';

/** A database file exactly as MollySocket (Rust) writes it. */
function mollySocketDb(path: string): void {
  const db = new Database(path);
  db.exec(`CREATE TABLE connections(uuid TEXT UNIQUE ON CONFLICT REPLACE, device_id INTEGER, password TEXT,
    endpoint TEXT, forbidden BOOLEAN NOT NULL CHECK (forbidden IN (0, 1)), last_registration INTEGER)`);
  db.pragma('user_version = 0'); // MollySocket never sets it
  const insert = db.prepare('INSERT INTO connections VALUES (?, ?, ?, ?, ?, ?)');
  insert.run(UUID, 3, 'pw1', 'https://push.example/up/1', 0, 1700000000);
  insert.run(UUID2, 1, 'pw2', 'https://push.example/up/2', 1, 0);
  db.close();
}

describe('Store', () => {
  it('creates a new file with mode 0600 in WAL mode', () => {
    const path = join(tempDir(), 'new.db');
    const store = Store.open(path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    store.put({ uuid: UUID, deviceId: 1, password: 'p', endpoint: 'https://e/1' }, 10);
    store.close();
    const raw = new Database(path);
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    raw.close();
  });

  it('keys connections by account and device', () => {
    const store = Store.open(join(tempDir(), 'k.db'));
    store.put({ uuid: UUID, deviceId: 1, password: 'a', endpoint: 'https://e/1' }, 10);
    store.put({ uuid: UUID, deviceId: 2, password: 'b', endpoint: 'https://e/2' }, 11);
    expect(store.list().map((c) => [c.deviceId, c.password])).toEqual([[1, 'a'], [2, 'b']]);
    expect(store.setForbidden({ uuid: UUID, deviceId: 2 }, 'signal_403', { password: 'b' }, 12)).toBe(true);
    expect(store.get({ uuid: UUID, deviceId: 2 })).toMatchObject({ forbidden: true, forbiddenReason: 'signal_403', forbiddenAt: 12 });
    store.put({ uuid: UUID, deviceId: 2, password: 'c', endpoint: 'https://e/2' }, 13);
    expect(store.get({ uuid: UUID, deviceId: 2 })).toMatchObject({ forbidden: false, forbiddenReason: null, password: 'c', lastRegistration: 13, createdAt: 11 });
    store.close();
  });

  it('forbids compare-and-set: only an enabled connection that still has the endpoint or password decided on', () => {
    const store = Store.open(join(tempDir(), 'f.db'));
    const key = { uuid: UUID, deviceId: 1 };
    store.put({ ...key, password: 'new', endpoint: 'https://e/new' }, 10);
    expect(store.setForbidden(key, 'endpoint_gone', { endpoint: 'https://e/old' }, 11)).toBe(false);
    expect(store.setForbidden(key, 'signal_403', { password: 'old' }, 11)).toBe(false);
    expect(store.get(key)?.forbidden).toBe(false);
    expect(store.setForbidden(key, 'signal_403', { password: 'new' }, 12)).toBe(true);
    expect(store.setForbidden(key, 'endpoint_gone', { endpoint: 'https://e/new' }, 13)).toBe(false); // the first reason stays
    expect(store.get(key)).toMatchObject({ forbidden: true, forbiddenReason: 'signal_403', forbiddenAt: 12 });
    store.close();
  });

  it("migrates MollySocket's database in place, keeping every row and its forbidden flag, with a backup", () => {
    const path = join(tempDir(), 'mollysocket.db');
    mollySocketDb(path);
    const umask = process.umask(0o022); // the copy holds every password: 0600 whatever the umask lets through
    const store = Store.open(path);
    process.umask(umask);
    expect(store.list()).toEqual([
      expect.objectContaining({ uuid: UUID2, deviceId: 1, password: 'pw2', endpoint: 'https://push.example/up/2', forbidden: true, lastRegistration: 0 }),
      expect.objectContaining({ uuid: UUID, deviceId: 3, password: 'pw1', endpoint: 'https://push.example/up/1', forbidden: false, lastRegistration: 1700000000 }),
    ]);
    store.close();
    expect(existsSync(`${path}.mollysocket.bak`)).toBe(true);
    expect(statSync(`${path}.mollysocket.bak`).mode & 0o777).toBe(0o600);
    const reopened = Store.open(path); // a second open finds it migrated
    expect(reopened.list()).toHaveLength(2);
    reopened.close();
  });

  it("reads MollySocket's file as it is in read mode, byte for byte unchanged, and migrates it only when asked", () => {
    const path = join(tempDir(), 'mollysocket.db');
    mollySocketDb(path);
    const before = readFileSync(path);
    const reader = Store.open(path, { mode: 'read' });
    const asItIs = reader.list();
    expect(asItIs.map((c) => [c.uuid, c.deviceId, c.password, c.forbidden, c.forbiddenReason, c.lastRegistration])).toEqual([
      [UUID2, 1, 'pw2', true, 'forbidden_in_mollysocket', 0],
      [UUID, 3, 'pw1', false, null, 1700000000],
    ]);
    expect([reader.heartbeat(), reader.liveStates(), reader.recordedVapidKey(), reader.migratedFrom]).toEqual([undefined, [], undefined, undefined]);
    reader.close();
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(readdirSync(join(path, '..'))).toEqual(['mollysocket.db']);

    const writer = Store.open(path, { mode: 'write' });
    expect(writer.migratedFrom).toEqual({ backup: `${path}.mollysocket.bak` });
    expect(writer.list().map((c) => [c.uuid, c.deviceId, c.password, c.forbidden, c.forbiddenReason, c.lastRegistration])).toEqual(
      asItIs.map((c) => [c.uuid, c.deviceId, c.password, c.forbidden, c.forbiddenReason, c.lastRegistration]),
    );
    writer.close();
    const copy = new Database(`${path}.mollysocket.bak`, { readonly: true });
    expect(copy.prepare('SELECT * FROM connections ORDER BY uuid').all()).toHaveLength(2);
    expect(copy.pragma('user_version', { simple: true })).toBe(0);
    copy.close();
    const again = Store.open(path, { mode: 'write' });
    expect(again.migratedFrom).toBeUndefined();
    again.close();
  });

  it('creates a database only in create mode', () => {
    const dir = tempDir();
    expect(() => Store.open(join(dir, 'a.db'), { mode: 'read' })).toThrow(/cannot open the database/);
    expect(() => Store.open(join(dir, 'a.db'), { mode: 'write' })).toThrow(/cannot open the database/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('records the VAPID public key the server signs with', () => {
    const path = join(tempDir(), 'k.db');
    const store = Store.open(path);
    expect(store.recordedVapidKey()).toBeUndefined();
    store.recordVapidKey('A');
    store.recordVapidKey('B');
    store.close();
    const reader = Store.open(path, { mode: 'read' });
    expect(reader.recordedVapidKey()).toBe('B');
    reader.close();
  });

  it('migrates a file with both spellings of a uuid to one lower-case row per account device, the newest registration', () => {
    const path = join(tempDir(), 'v4.db');
    Store.open(path).close();
    const raw = new Database(path);
    const insert = raw.prepare(
      `INSERT INTO connections (uuid, device_id, password, endpoint, last_registration, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, 1)`,
    );
    insert.run(UUID.toUpperCase(), 1, 'newer', 'https://e/upper', 20);
    insert.run(UUID, 1, 'older', 'https://e/lower', 10);
    insert.run(UUID.toUpperCase(), 2, 'only', 'https://e/2', 5);
    insert.run(UUID2, 1, 'tie-lower', 'https://e/3', 7);
    insert.run(UUID2.toUpperCase(), 1, 'tie-upper', 'https://e/4', 7);
    raw.pragma('user_version = 4'); // as schema 4 wrote it, before uuids were made canonical
    raw.close();
    const store = Store.open(path);
    expect(store.list().map((c) => [c.uuid, c.deviceId, c.password])).toEqual([
      [UUID2, 1, 'tie-lower'], // equal times: the spelling already canonical stays
      [UUID, 1, 'newer'],
      [UUID, 2, 'only'],
    ]);
    store.close();
  });

  it('says which setting to fix when the file cannot be opened', () => {
    expect(() => Store.open('/nonexistent-dir/x.db')).toThrow(/cannot open the database \/nonexistent-dir\/x.db \(setting "db"\)/);
  });

  it('reports commits from another connection through data_version', () => {
    const path = join(tempDir(), 'dv.db');
    const server = Store.open(path);
    const cli = Store.open(path);
    const before = server.dataVersion();
    cli.put({ uuid: UUID, deviceId: 1, password: 'p', endpoint: 'https://e/1' }, 1);
    expect(server.dataVersion()).not.toBe(before);
    server.close();
    cli.close();
  });

  /** Opens the database from `n` processes at the same moment (the built store, as the server and the CLI do). */
  async function openConcurrently(path: string, n: number): Promise<(number | null)[]> {
    const store = JSON.stringify(join(packageRoot, 'dist', 'store.js'));
    const script = `import(${store}).then((m) => m.Store.open(${JSON.stringify(path)}).close())`;
    const runs = await Promise.all(
      Array.from({ length: n }, () =>
        new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
          let stderr = '';
          child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
          child.on('exit', (code) => resolve({ code, stderr }));
        }),
      ),
    );
    const failures = runs.filter((r) => r.code !== 0).map((r) => r.stderr.trim());
    if (failures.length > 0) console.error(`processes that failed to open ${path}:\n${failures.join('\n')}`);
    return runs.map((r) => r.code);
  }

  it('lets several processes open a new database at once', async () => {
    for (let round = 0; round < 5; round++) {
      const path = join(tempDir(), 'race.db');
      expect(await openConcurrently(path, 4)).toEqual([0, 0, 0, 0]);
      const store = Store.open(path);
      expect(store.list()).toEqual([]);
      store.close();
    }
  });

  it("lets several processes open MollySocket's database at once, migrating it once", async () => {
    for (let round = 0; round < 3; round++) {
      const path = join(tempDir(), 'mollysocket.db');
      mollySocketDb(path);
      expect(await openConcurrently(path, 4)).toEqual([0, 0, 0, 0]);
      const store = Store.open(path);
      expect(store.list().map((c) => [c.uuid, c.forbidden])).toEqual([[UUID2, true], [UUID, false]]);
      store.close();
      expect(existsSync(`${path}.mollysocket.bak`)).toBe(true);
      expect(statSync(`${path}.mollysocket.bak`).mode & 0o777).toBe(0o600);
    }
  });
});
