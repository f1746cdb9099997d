import type { Command } from 'commander';
import { isFresh } from '../heartbeat.js';
import { connectionKey } from '../store.js';
import { FailureError, formatTime, loadFor, maskUuid, print, table, withStore } from './common.js';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('whether the server runs, and the state of every connection (works without the web server)')
    .option('-a, --anonymized', 'mask the uuids')
    .option('--json', 'print JSON, for scripts')
    .action(async (opts: { anonymized?: boolean; json?: boolean }, cmd: Command) => {
      const { config } = loadFor(cmd);
      const now = Date.now();
      const { heartbeat, conns, live } = await withStore(config, async (store) => ({
        heartbeat: await store.heartbeat(),
        conns: await store.list(),
        live: new Map((await store.liveStates()).map((s) => [connectionKey(s), s])),
      }));
      const running = isFresh(heartbeat, now);
      const rows = conns.map((c) => {
        const published = running ? live.get(connectionKey(c)) : undefined;
        const stored = c.forbidden
          ? { state: 'forbidden', reason: c.forbiddenReason ?? 'unknown', since: (c.forbiddenAt ?? 0) * 1000 }
          : { state: running ? 'pending' : 'stopped', reason: running ? 'not picked up yet' : 'server not running', since: 0 };
        const s = published ?? stored;
        return { uuid: opts.anonymized ? maskUuid(c.uuid) : c.uuid, device_id: c.deviceId, state: s.state, reason: s.reason, since: s.since };
      });
      if (opts.json) {
        print(JSON.stringify({ server: { running, ...(running && heartbeat) }, connections: rows }, null, 2));
        return;
      }
      print(
        running && heartbeat
          ? `server: running (pid ${heartbeat.pid}, version ${heartbeat.version}, since ${formatTime(heartbeat.startedAt, 'ms')}, seen ${Math.round((now - heartbeat.seenAt) / 1000)} s ago)`
          : `server: not running${heartbeat ? ` (last seen ${formatTime(heartbeat.seenAt, 'ms')})` : ''}`,
      );
      if (rows.length === 0) {
        print('No connection registered yet.');
        return;
      }
      print(table([['UUID', 'DEVICE', 'STATE', 'REASON', 'SINCE'], ...rows.map((r) => [r.uuid, String(r.device_id), r.state, r.reason, formatTime(r.since, 'ms')])]));
    });

  program
    .command('health')
    .description('exit 0 when a server is running on this database (its heartbeat is recent), else 1: for HEALTHCHECK')
    .action(async (_o, cmd: Command) => {
      const { config } = loadFor(cmd);
      const heartbeat = await withStore(config, (store) => store.heartbeat());
      const ageS = heartbeat && Math.round((Date.now() - heartbeat.seenAt) / 1000);
      if (!isFresh(heartbeat, Date.now())) {
        throw new FailureError(heartbeat ? `unhealthy: no heartbeat from the server for ${ageS} s` : 'unhealthy: no server is running on this database');
      }
      print(`healthy: server pid ${heartbeat!.pid} seen ${ageS} s ago`);
    });
}
