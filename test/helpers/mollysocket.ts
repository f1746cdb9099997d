import Database from 'better-sqlite3';

/** A connection row as MollySocket 1.7 keeps it: one per account. */
export interface MollySocketRow {
  uuid: string;
  deviceId: number;
  password: string;
  endpoint: string;
  forbidden: boolean;
  lastRegistration: number;
}

/** Writes a database file exactly as MollySocket 1.7 does (its one table, `user_version` 0). */
export function writeMollySocketDb(path: string, rows: MollySocketRow[]): void {
  const db = new Database(path);
  db.exec(`CREATE TABLE connections(uuid TEXT UNIQUE ON CONFLICT REPLACE, device_id INTEGER, password TEXT,
    endpoint TEXT, forbidden BOOLEAN NOT NULL CHECK (forbidden IN (0, 1)), last_registration INTEGER)`);
  const insert = db.prepare('INSERT INTO connections VALUES (?, ?, ?, ?, ?, ?)');
  for (const r of rows) insert.run(r.uuid, r.deviceId, r.password, r.endpoint, r.forbidden ? 1 : 0, r.lastRegistration);
  db.close();
}
