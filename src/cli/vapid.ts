import type { Command } from 'commander';
import { generatePrivateKey } from '../push/vapid.js';

export function registerVapid(program: Command): void {
  const vapid = program.command('vapid').description('VAPID keys');
  vapid
    .command('generate')
    .alias('gen')
    .description('print a new VAPID private key (and nothing else) on stdout')
    .action(() => {
      process.stdout.write(`${generatePrivateKey()}\n`);
    });
}
