import type { Command } from 'commander';
import { isFresh } from '../heartbeat.js';
import { endpointOrigin } from '../log.js';
import { describeReason } from '../reasons.js';
import { EndpointPolicy, uuidRefusal } from '../policy.js';
import { pushStack } from '../push/setup.js';
import type { PushOutcome } from '../push/client.js';
import type { Config } from '../config.js';
import type { ResolvedKey } from '../push/vapid.js';
import { connectionKey, type Connection, type LiveState, type Store } from '../store/store.js';
import { nextTry } from './status.js';
import { FailureError, formatTime, jsonTime, loadFor, maskUuid, parseDeviceId, parseUuid, print, table, UsageError, vapidKey, withStore } from './common.js';

/** How a push went, in words. */
function describeOutcome(o: PushOutcome): string {
  switch (o.kind) {
    case 'delivered':
      return `delivered (${o.status})`;
    case 'gone':
      return `the endpoint is gone (${o.status}): register again from Molly`;
    case 'rate_limited':
      return `the push server asks to slow down (429)`;
    case 'rejected':
      return `refused${o.status ? ` (${o.status})` : ''}${o.reason ? `: ${o.reason}` : ''}`;
    case 'failed':
      return `failed: ${o.status ? `HTTP ${o.status}` : (o.error ?? 'no answer')}`;
  }
}

/** Sends a test push to each connection and prints how it went; false when any was not delivered. */
async function ping(config: Config, key: ResolvedKey, conns: Connection[]): Promise<boolean> {
  const { client } = pushStack(config, key.privateKey);
  try {
    let all = true;
    for (const c of conns) {
      const outcome = await client.send(c.endpoint, 'test');
      print(`test push to ${c.uuid} device ${c.deviceId} (${endpointOrigin(c.endpoint)}): ${describeOutcome(outcome)}`);
      all &&= outcome.kind === 'delivered';
    }
    return all;
  } finally {
    client.close();
  }
}

/** The connections of an account (or of one of its devices); there must be some. */
async function selected(store: Store, uuid: string, deviceId: number | undefined): Promise<Connection[]> {
  const found = await store.list({ uuid, ...(deviceId !== undefined && { deviceId }) });
  if (found.length === 0) {
    throw new FailureError(`no connection for ${uuid}${deviceId === undefined ? '' : ` device ${deviceId}`} (see \`mollysocket connection list\`)`);
  }
  return found;
}

export function registerConnection(program: Command): void {
  const connection = program.command('connection').description('the registered connections (account devices)');

  connection
    .command('add')
    .description('register a connection, as Molly shows it in air-gapped mode, and send a test push')
    .argument('<uuid>', 'account UUID', parseUuid)
    .argument('<device_id>', 'linked device id', parseDeviceId)
    .argument('<password>', 'linked device password')
    .argument('<endpoint>', 'UnifiedPush endpoint URL')
    .action(async (uuid: string, deviceId: number, password: string, endpoint: string, _o, cmd: Command) => {
      const loaded = loadFor(cmd);
      const { config } = loaded;
      const refusal = uuidRefusal(uuid, config.allowed_uuids);
      if (refusal) throw new UsageError(refusal);
      const target = await new EndpointPolicy(config.allowed_endpoints).check(endpoint);
      if (!target.ok && target.transient) throw new FailureError(`cannot check the endpoint now: ${target.reason}`);
      if (!target.ok) throw new UsageError(`endpoint is not allowed: ${target.reason}`);
      const { conn, key } = await withStore(loaded, 'create', async (store, backend) => {
        const key = await vapidKey(loaded, backend); // before storing: a connection is not added with a key the server does not use
        return { conn: await store.put({ uuid, deviceId, password, endpoint }, Math.floor(Date.now() / 1000)), key };
      });
      print(`Connection for ${uuid} device ${deviceId} added: a running server connects it within a few seconds.`);
      if (!(await ping(config, key, [conn]))) throw new FailureError('the connection is stored, but the test push was not delivered');
    });

  connection
    .command('list')
    .description('list the connections (never their passwords)')
    .option('-a, --anonymized', 'mask the uuids too')
    .option('--json', 'print JSON, for scripts')
    .action(async (opts: { anonymized?: boolean; json?: boolean }, cmd: Command) => {
      const { conns, live } = await withStore(loadFor(cmd), 'read', async (store) => ({
        conns: await store.list(),
        // A running server's view: which connections wait to reconnect, and until when.
        live: isFresh(await store.heartbeat(), Date.now())
          ? new Map((await store.liveStates()).map((s) => [connectionKey(s), s]))
          : new Map<string, LiveState>(),
      }));
      const uuid = (u: string) => (opts.anonymized ? maskUuid(u) : u);
      if (opts.json) {
        const rows = conns.map((c) => ({
          uuid: uuid(c.uuid),
          device_id: c.deviceId,
          state: c.forbidden ? 'forbidden' : 'ok',
          forbidden_reason: c.forbiddenReason,
          forbidden_at: jsonTime(c.forbiddenAt),
          endpoint_origin: endpointOrigin(c.endpoint),
          last_registration: jsonTime(c.lastRegistration),
        }));
        print(JSON.stringify(rows, null, 2));
        return;
      }
      if (conns.length === 0) {
        print('No connection registered yet.');
        return;
      }
      const state = (c: Connection): string => {
        if (c.forbidden) return `forbidden: ${describeReason(c.forbiddenReason ?? 'unknown')}`;
        const s = live.get(connectionKey(c));
        if (s?.state !== 'backoff') return 'ok';
        return `ok, reconnecting: ${describeReason(s.reason)}${s.retryAt === undefined ? '' : `; next try ${nextTry(s.retryAt, Date.now())}`}`;
      };
      print(
        table([
          ['UUID', 'DEVICE', 'STATE', 'ENDPOINT', 'LAST REGISTRATION'],
          ...conns.map((c) => [uuid(c.uuid), String(c.deviceId), state(c), endpointOrigin(c.endpoint), formatTime(c.lastRegistration)]),
        ]),
      );
    });

  /** A subcommand acting on an account's connections, or on one device's. */
  const onConnections = (name: string, description: string): Command =>
    connection.command(name).description(description).argument('<uuid>', 'account UUID', parseUuid).argument('[device_id]', 'only this device', parseDeviceId);

  onConnections('remove', 'remove the connections of an account, or of one of its devices').action(
    async (uuid: string, deviceId: number | undefined, _o, cmd: Command) => {
      const loaded = loadFor(cmd);
      // Read first: opening for writing migrates a MollySocket file, which a remove that finds nothing must not do.
      await withStore(loaded, 'read', (store) => selected(store, uuid, deviceId));
      const removed = await withStore(loaded, 'write', (store) => store.remove({ uuid, ...(deviceId !== undefined && { deviceId }) }));
      print(
        `Removed ${removed} connection${removed === 1 ? '' : 's'} of ${uuid}: a running server closes ${removed === 1 ? 'its socket' : 'their sockets'} within a few seconds.`,
      );
    },
  );

  onConnections('ping', 'send a test push to the endpoints of an account').action(async (uuid: string, deviceId: number | undefined, _o, cmd: Command) => {
    const loaded = loadFor(cmd);
    const { conns, key } = await withStore(loaded, 'read', async (store, backend) => ({
      key: await vapidKey(loaded, backend),
      conns: await selected(store, uuid, deviceId),
    }));
    if (!(await ping(loaded.config, key, conns))) throw new FailureError('a test push was not delivered');
  });

  onConnections('enable', 'clear the forbidden state of an account (or one device): the server connects again').action(
    async (uuid: string, deviceId: number | undefined, _o, cmd: Command) => {
      const loaded = loadFor(cmd);
      // Read first, as for remove: a MollySocket file is migrated only when a connection is to be enabled.
      const conns = await withStore(loaded, 'read', (store) => selected(store, uuid, deviceId));
      const forbidden = conns.filter((c) => c.forbidden);
      if (forbidden.length > 0) {
        await withStore(loaded, 'write', async (store) => {
          for (const c of forbidden) await store.enable(c, Math.floor(Date.now() / 1000));
        });
      }
      for (const c of conns) {
        print(
          c.forbidden
            ? `Enabled ${uuid} device ${c.deviceId}: a running server connects it within a few seconds.`
            : `${uuid} device ${c.deviceId} is enabled already.`,
        );
      }
    },
  );
}
