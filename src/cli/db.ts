import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { planDowngrade, writeMollySocketDb } from '../downgrade.js';
import { parsePrivateKey, publicKeyOf, resolveVapidKey } from '../push/vapid.js';
import { isPostgresUrl } from '../store/location.js';
import { openStore, type Backend } from '../store/open.js';
import { ENDPOINT_GONE } from '../registrations.js';
import { formatTime, loadFor, print, UsageError, withStore } from './common.js';

/** A copy taken while a server runs misses whatever it writes afterwards (registrations, forbidden connections). */
async function refuseWhileRunning(backend: Backend, force: boolean | undefined): Promise<string | undefined> {
  const running = await backend.runningServer();
  const { location } = backend.store;
  if (running && !force) {
    throw new UsageError(
      `${running} is running on ${isPostgresUrl(location) ? location : resolve(location)}: what it writes after the copy would be lost; stop it first, or pass --force to copy anyway`,
    );
  }
  return running;
}

export function registerDb(program: Command): void {
  const db = program.command('db').description('the database (file or PostgreSQL)');

  db.command('downgrade')
    .description("write the configured database's connections to a new file that MollySocket 1.7 opens")
    .argument('<output-file>', 'the new file to write (never overwritten)')
    .option('--force', 'write it even while a server runs on the database')
    .action(async (output: string, opts: { force?: boolean }, cmd: Command) => {
      const loaded = loadFor(cmd);
      const { config } = loaded;
      if (existsSync(output)) {
        throw new UsageError(`output-file ${output} already exists: downgrade never overwrites a file, name a new one`);
      }
      const { plan, running } = await withStore(loaded, 'read', async (store, backend) => {
        const running = await refuseWhileRunning(backend, opts.force);
        return { plan: planDowngrade(await store.list()), running };
      });
      writeMollySocketDb(output, plan.kept);
      print(`Wrote ${plan.kept.length} connection(s) to ${output} in MollySocket 1.7's format (one per account).`);
      for (const { conn, keptInstead, because } of plan.leftOut) {
        print(
          `Left out: ${conn.uuid} device ${conn.deviceId} (${conn.forbidden ? 'forbidden' : 'ok'}, last registration ` +
            `${formatTime(conn.lastRegistration)}): MollySocket keeps one device per account; device ${keptInstead.deviceId} ` +
            `is kept because ${because}. MollySocket answers internal_error to that device's registrations while device ` +
            `${keptInstead.deviceId}'s connection is healthy.`,
        );
      }
      for (const c of plan.kept.filter((k) => k.forbiddenReason === ENDPOINT_GONE)) {
        print(
          `Forbidden: ${c.uuid} device ${c.deviceId} stopped because its push endpoint was gone; MollySocket answers ` +
            '`forbidden` to that Molly until it is linked again (this server would have taken a new endpoint).',
        );
      }
      const key = resolveVapidKey(config, { generate: false });
      if (key?.source === 'kept') {
        print(
          `VAPID key: MollySocket does not look for ${key.path}: set vapid_key_file = "${resolve(key.path as string)}" ` +
            '(MOLLY_VAPID_KEY_FILE) in its configuration, or Molly users must scan a new code.',
        );
      } else if (key) {
        print(`VAPID key: keep ${key.source} as it is in MollySocket's configuration, or Molly users must scan a new code.`);
      }
      print(`Next: ${running ? `stop ${running}, and ` : ''}start MollySocket with db = "${resolve(output)}".`);
    });

  registerDbCopy(db);
}

/** `db copy`: every connection, and the generated VAPID key, from one store into an empty one. */
function registerDbCopy(db: Command): void {
  db.command('copy')
    .description('copy every connection and the kept VAPID key into an empty database: a SQLite file to a PostgreSQL URL, or back')
    .argument('<from>', 'a SQLite file path or a postgres:// URL')
    .argument('<to>', 'a SQLite file path or a postgres:// URL, holding no connection yet')
    .option('--force', 'copy even while a server runs on <from>, or keep the VAPID key the target already has')
    .action(async (from: string, to: string, opts: { force?: boolean }) => {
      if (from === to) throw new UsageError('from and to are the same database: name another one as <to>');
      if (!isPostgresUrl(from) && !existsSync(from)) throw new UsageError(`from ${from} does not exist: name the database to copy`);
      const source = await openStore(from);
      try {
        const target = await openStore(to);
        try {
          const present = (await target.store.list()).length;
          if (present > 0) {
            throw new UsageError(`to ${target.store.location} already holds ${present} connection(s): copy into an empty database`);
          }
          await refuseWhileRunning(source, opts.force);
          const key = await source.vapidKey.read();
          // Checked before anything is written: Molly signs up with the source's key, so another one means a new code.
          const theirs = key === undefined ? undefined : await target.vapidKey.publicKey();
          const ours = key === undefined ? undefined : publicKeyOf(parsePrivateKey(key, 'the kept VAPID key'));
          if (theirs !== undefined && theirs !== ours && !opts.force) {
            throw new UsageError(
              `to ${target.store.location} already has another VAPID key (public key ${theirs}) than from ${source.store.location} (public key ${ours}): ` +
                "Molly users would have to scan a new code; copy into a place without a key (move the target's vapid.key away), or pass --force to keep the target's key",
            );
          }
          const conns = await source.store.list();
          await target.store.importConnections(conns);
          print(`Copied ${conns.length} connection(s) from ${source.store.location} to ${target.store.location}.`);
          print(
            key
              ? await target.vapidKey.keep(key)
              : 'VAPID key: none kept with the source (it is configured): configure the same vapid_privkey or vapid_key_file for the target',
          );
        } finally {
          await target.store.close();
        }
      } finally {
        await source.store.close();
      }
    });
}
