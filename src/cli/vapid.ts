import type { Command } from 'commander';
import { generatePrivateKey } from '../push/vapid.js';
import { pushStack } from '../push/setup.js';
import type { LoadedConfig } from '../config.js';
import type { ResolvedKey } from '../push/vapid.js';
import { loadFor, print, UsageError, vapidKey, withStore } from './common.js';

/** The key the server on this database signs with (see vapidKey). */
const serverKey = (loaded: LoadedConfig): Promise<ResolvedKey> => withStore(loaded, 'read', (_store, backend) => vapidKey(loaded, backend));

export function registerVapid(program: Command): void {
  const vapid = program.command('vapid').description('VAPID keys');
  vapid
    .command('generate')
    .alias('gen')
    .description('print a new VAPID private key (and nothing else) on stdout')
    .action(() => print(generatePrivateKey()));

  vapid
    .command('pub')
    .description('print the public key of the configured (or kept) VAPID key')
    .action(async (_o, cmd: Command) => print((await serverKey(loadFor(cmd))).publicKey));

  vapid
    .command('test')
    .description('print the VAPID Authorization header this server sends to an endpoint')
    .argument('<endpoint>', 'UnifiedPush endpoint URL')
    .action(async (endpoint: string, _o, cmd: Command) => {
      const loaded = loadFor(cmd);
      if (!URL.canParse(endpoint)) throw new UsageError(`endpoint ${endpoint} is not a URL: give the full https://… URL`);
      print(pushStack(loaded.config, (await serverKey(loaded)).privateKey).signer.header(endpoint));
    });
}
