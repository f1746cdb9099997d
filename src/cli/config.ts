import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { configExample, describeSource, redactedConfig } from '../config.js';
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
      for (const [key, value] of Object.entries(redactedConfig(loaded.config))) {
        const shown = value === undefined ? '(unset)' : JSON.stringify(value);
        print(`${key} = ${shown}  # ${describeSource(loaded.sources[key as keyof typeof loaded.sources])}`);
      }
    });
}
