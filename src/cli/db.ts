import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { planDowngrade, writeMollySocketDb } from '../downgrade.js';
import { resolveVapidKey } from '../push/vapid.js';
import { ENDPOINT_GONE } from '../registrations.js';
import { formatTime, loadFor, print, UsageError, withStore } from './common.js';

export function registerDb(program: Command): void {
  const db = program.command('db').description('the database file');

  db.command('downgrade')
    .description("write the configured database's connections to a new file that MollySocket 1.7 opens")
    .argument('<output-file>', 'the new file to write (never overwritten)')
    .action(async (output: string, _o, cmd: Command) => {
      const { config } = loadFor(cmd);
      if (existsSync(output)) {
        throw new UsageError(`output-file ${output} already exists: downgrade never overwrites a file, name a new one`);
      }
      if (!existsSync(config.db)) {
        throw new UsageError(`the database ${config.db} (setting "db") does not exist: nothing to downgrade; check -c or MOLLY_DB`);
      }
      const plan = await withStore(config, async (store) => planDowngrade(await store.list()));
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
            "`forbidden` to that Molly until it is linked again (this server would have taken a new endpoint).",
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
      print(`Next: stop this server, and start MollySocket with db = "${resolve(output)}".`);
    });
}
