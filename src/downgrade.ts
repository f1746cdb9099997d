import { closeSync, linkSync, openSync, rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import type { Connection } from './store/store.js';

/**
 * The way back to MollySocket 1.7: its database file, written from ours. MollySocket keeps one connection per
 * account (its table is keyed by uuid alone) and knows no reason for a forbidden flag; everything else it needs
 * (credentials, endpoint, forbidden flag, last registration) goes back as it is.
 */

/** MollySocket 1.7's table, as its db.rs creates it. It never sets `user_version`, so its files hold 0. */
const MOLLYSOCKET_SCHEMA = `CREATE TABLE connections(
    uuid TEXT UNIQUE ON CONFLICT REPLACE,
    device_id INTEGER,
    password TEXT,
    endpoint TEXT,
    forbidden BOOLEAN NOT NULL CHECK (forbidden IN (0, 1)),
    last_registration INTEGER
)`;

/** A connection that cannot go back, and the one of its account that does instead. */
interface LeftOut {
  conn: Connection;
  keptInstead: Connection;
  /** Why `keptInstead` was chosen: what makes it the device more likely in use. */
  because: string;
}

export interface DowngradePlan {
  /** One connection per account, in uuid order. */
  kept: Connection[];
  leftOut: LeftOut[];
}

/**
 * Which connection of each account goes back: the one most likely to be the Molly in use. One that is not
 * forbidden first (Signal still accepts it), then the latest registration (Molly registers on every unlock), then
 * the higher device id (the later link). Pure.
 */
export function planDowngrade(conns: readonly Connection[]): DowngradePlan {
  const byAccount = new Map<string, Connection[]>();
  for (const c of conns) byAccount.set(c.uuid, [...(byAccount.get(c.uuid) ?? []), c]);
  const kept: Connection[] = [];
  const leftOut: LeftOut[] = [];
  for (const uuid of [...byAccount.keys()].sort()) {
    const ranked = [...(byAccount.get(uuid) as Connection[])].sort(
      (a, b) => Number(a.forbidden) - Number(b.forbidden) || b.lastRegistration - a.lastRegistration || b.deviceId - a.deviceId,
    );
    const [best, ...rest] = ranked as [Connection, ...Connection[]];
    kept.push(best);
    for (const conn of rest) leftOut.push({ conn, keptInstead: best, because: whyBetter(best, conn) });
  }
  return { kept, leftOut };
}

function whyBetter(kept: Connection, other: Connection): string {
  if (kept.forbidden !== other.forbidden) return 'it is not forbidden';
  if (kept.lastRegistration !== other.lastRegistration) return 'Molly registered it more recently';
  return 'it is the later link (higher device id)';
}

/**
 * Writes `conns` to a new MollySocket database at `path` (mode 0600: it holds passwords). Never overwrites: the
 * file is built under a temporary name and linked into place, which fails if `path` appeared meanwhile.
 */
export function writeMollySocketDb(path: string, conns: readonly Connection[]): void {
  const building = `${path}.${process.pid}.tmp`;
  closeSync(openSync(building, 'wx', 0o600));
  try {
    const db = new Database(building);
    try {
      db.exec(MOLLYSOCKET_SCHEMA);
      const insert = db.prepare('INSERT INTO connections(uuid, device_id, password, endpoint, forbidden, last_registration) VALUES (?, ?, ?, ?, ?, ?)');
      db.transaction(() => {
        for (const c of conns) insert.run(c.uuid, c.deviceId, c.password, c.endpoint, c.forbidden ? 1 : 0, c.lastRegistration);
      })();
    } finally {
      db.close();
    }
    linkSync(building, path);
  } finally {
    rmSync(building, { force: true });
  }
}
