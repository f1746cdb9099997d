import type { Command } from 'commander';
import { EndpointPolicy, uuidRefusal } from '../policy.js';
import { FailureError, hasDatabase, loadFor, parseUuid, print, withStore } from './common.js';

export function registerTest(program: Command): void {
  const test = program.command('test').description('check an endpoint or an account against the configuration');

  test
    .command('endpoint')
    .description('whether an endpoint is allowed, and the address it would be pushed to')
    .argument('<url>', 'UnifiedPush endpoint URL')
    .action(async (url: string, _o, cmd: Command) => {
      const { config } = loadFor(cmd);
      const verdict = await new EndpointPolicy(config.allowed_endpoints).check(url);
      if (!verdict.ok) throw new FailureError(`Endpoint ${url} is not valid: ${verdict.reason}`);
      print(`Endpoint ${url} is valid (pushed to ${verdict.address.address})`);
    });

  test
    .command('uuid')
    .description('whether an account may register, and the state of its connections')
    .argument('<uuid>', 'account UUID', parseUuid)
    .action(async (uuid: string, _o, cmd: Command) => {
      const loaded = loadFor(cmd);
      const refusal = uuidRefusal(uuid, loaded.config.allowed_uuids);
      if (refusal) throw new FailureError(refusal);
      print(`UUID ${uuid} is valid`);
      // Before any server ran there is no database, and so no connection: nothing is created to say so.
      const conns = hasDatabase(loaded) ? await withStore(loaded, 'read', (store) => store.list({ uuid })) : [];
      if (conns.length === 0) print('  No connection is registered with this UUID.');
      for (const c of conns) {
        print(`  Device ${c.deviceId}: ${c.forbidden ? `forbidden (${c.forbiddenReason ?? 'unknown reason'})` : 'registered and enabled'}.`);
      }
    });
}
