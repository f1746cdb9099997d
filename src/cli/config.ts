import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { stringify } from 'smol-toml';
import { CONFIG_KEYS, configExample, describeSource, type ConfigKey } from '../config.js';
import { isPostgresUrl, redactUrl } from '../store/location.js';
import { describeKeyInEffect, loadFor, print } from './common.js';

export function registerConfig(program: Command): void {
  program
    .command('config')
    .description('print the effective configuration, secrets redacted, with where each value came from')
    .option('--example', 'print an example file documenting every key and its default instead')
    .action((opts: { example?: boolean }, cmd: Command) => {
      if (opts.example) {
        print(configExample());
        return;
      }
      const loaded = loadFor(cmd);
      print(`# config file: ${loaded.file ?? 'none found'}`);
      const { db } = loaded.config;
      if (isPostgresUrl(db)) {
        print(`# database: ${redactUrl(db)} (PostgreSQL, shared by several instances)`);
        print(`# VAPID public key in effect: ${describeKeyInEffect(loaded, 'the key kept in the database, shared by every instance (`vapid pub` shows it)')}`);
      } else {
        print(`# database: ${resolve(db)}${existsSync(db) ? '' : ' (does not exist)'}`);
        print(`# VAPID public key in effect: ${describeKeyInEffect(loaded)}`);
      }
      for (const [key, value] of Object.entries(loaded.config)) print(tomlLine(key as ConfigKey, value, describeSource(loaded.sources[key as ConfigKey])));
    });
}

/**
 * One key as a TOML line that loads back as it is, so the output can be pasted into a config file. An unset key is a
 * comment; so is a secret, which is set but never printed (put it back by hand); a database URL keeps its place with
 * its password masked, so that a pasted file fails loudly at connect rather than fall back to a SQLite file.
 */
function tomlLine(key: ConfigKey, value: unknown, source: string): string {
  if (value === undefined) return `# ${key} = (unset)  # ${source}`;
  if (CONFIG_KEYS[key].secret) return `# ${key} = "..."  # ${source}: set, not printed`;
  const masked = key === 'db' ? redactUrl(value as string) : value;
  return `${stringify({ [key]: masked }).trim()}  # ${source}${masked !== value ? ': the password is not printed' : ''}`;
}
