import { hostname } from 'node:os';
import type { Command } from 'commander';
import { isFresh } from '../heartbeat.js';
import { describeReason } from '../reasons.js';
import { connectionKey } from '../store/store.js';
import type { InstanceRow } from '../store/postgres.js';
import { FailureError, formatTime, jsonTime, loadFor, maskUuid, print, table, withStore } from './common.js';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('whether the server runs, and the state of every connection (works without the web server)')
    .option('-a, --anonymized', 'mask the uuids')
    .option('--json', 'print JSON, for scripts')
    .action(async (opts: { anonymized?: boolean; json?: boolean }, cmd: Command) => {
      const now = Date.now();
      const { heartbeat, conns, live, instances } = await withStore(loadFor(cmd), 'read', async (store, backend) => ({
        heartbeat: await store.heartbeat(),
        conns: await store.list(),
        live: new Map((await store.liveStates()).map((s) => [connectionKey(s), s])),
        // Several instances: who is there, and who owns what.
        instances: await backend.instances?.(),
      }));
      const instanceName = new Map((instances ?? []).map((i) => [i.id, i.name]));
      const running = isFresh(heartbeat, now);
      const rows = conns.map((c) => {
        const published = running ? live.get(connectionKey(c)) : undefined;
        const stored = c.forbidden
          ? { state: 'forbidden', reason: c.forbiddenReason ?? 'unknown', since: (c.forbiddenAt ?? 0) * 1000 }
          : { state: running ? 'pending' : 'stopped', reason: running ? 'not picked up yet' : 'server not running', since: 0 };
        const s = published ?? stored;
        const owner = instances && { instance: c.owner === null ? null : (instanceName.get(c.owner) ?? c.owner) };
        const retryAt = published?.retryAt ?? null;
        return {
          uuid: opts.anonymized ? maskUuid(c.uuid) : c.uuid,
          device_id: c.deviceId,
          state: s.state,
          reason: s.reason,
          since: s.since,
          retry_at: retryAt,
          ...owner,
        };
      });
      if (opts.json) {
        const server =
          running && heartbeat
            ? {
                running,
                pid: heartbeat.pid,
                version: heartbeat.version,
                started_at: jsonTime(heartbeat.startedAt, 'ms'),
                seen_at: jsonTime(heartbeat.seenAt, 'ms'),
              }
            : { running };
        const connections = rows.map((r) => ({ ...r, since: jsonTime(r.since, 'ms'), retry_at: jsonTime(r.retry_at, 'ms') }));
        print(JSON.stringify({ server, ...(instances && { instances }), connections }, null, 2));
        return;
      }
      print(
        running && heartbeat
          ? `server: running (pid ${heartbeat.pid}, version ${heartbeat.version}, since ${formatTime(heartbeat.startedAt, 'ms')}, seen ${Math.round((now - heartbeat.seenAt) / 1000)} s ago)`
          : `server: not running${heartbeat ? ` (last seen ${formatTime(heartbeat.seenAt, 'ms')})` : ''}`,
      );
      if (instances) print(describeInstances(instances));
      if (rows.length === 0) {
        print('No connection registered yet.');
        return;
      }
      const retrying = rows.some((r) => r.retry_at !== null);
      const header = ['UUID', 'DEVICE', 'STATE', 'REASON', 'SINCE', ...(retrying ? ['NEXT TRY'] : []), ...(instances ? ['INSTANCE'] : [])];
      print(
        table([
          header,
          ...rows.map((r) => [
            r.uuid,
            String(r.device_id),
            r.state,
            describeReason(r.reason),
            formatTime(r.since, 'ms'),
            ...(retrying ? [r.retry_at === null ? '' : nextTry(r.retry_at, now)] : []),
            ...(instances ? [r.instance ?? '(none)'] : []),
          ]),
        ]),
      );
    });

  program
    .command('health')
    .description(
      'exit 0 when a server is running on this database (its heartbeat is recent), else 1: for HEALTHCHECK; on PostgreSQL, the instance named instance_name',
    )
    .action(async (_o, cmd: Command) => {
      const loaded = loadFor(cmd);
      // Several instances: this container's or host's own, by its stable name.
      const heartbeat = await withStore(loaded, 'read', (store) => store.heartbeat(loaded.config.instance_name || hostname()));
      const ageS = heartbeat && Math.round((Date.now() - heartbeat.seenAt) / 1000);
      if (!isFresh(heartbeat, Date.now())) {
        throw new FailureError(heartbeat ? `unhealthy: no heartbeat from the server for ${ageS} s` : 'unhealthy: no server is running on this database');
      }
      print(`healthy: server pid ${heartbeat!.pid} seen ${ageS} s ago`);
    });
}

/** When a connection in backoff tries next: the time, and how far off it is. */
export function nextTry(retryAt: number, now: number): string {
  const s = Math.round((retryAt - now) / 1000);
  return `${formatTime(retryAt, 'ms')} (${s > 0 ? `in ${s} s` : 'now'})`;
}

/** The instances sharing a PostgreSQL database: their leases (by the database's clock) and how many devices each owns. */
function describeInstances(instances: InstanceRow[]): string {
  const live = instances.filter((i) => i.live);
  const lines = [`instances: ${live.length} live${instances.length > live.length ? `, ${instances.length - live.length} expired` : ''}`];
  if (instances.length === 0) return lines[0]!;
  const state = (i: InstanceRow) => (!i.live ? 'expired' : i.leaving ? 'leaving' : 'live');
  lines.push(
    table([
      ['NAME', 'ID', 'PID', 'VERSION', 'STATE', 'LEASE LEFT', 'DEVICES'],
      ...instances.map((i) => [i.name, i.id.slice(0, 8), String(i.pid), i.version, state(i), `${(i.leaseLeftMs / 1000).toFixed(1)} s`, String(i.owned ?? 0)]),
    ]).trimEnd(),
  );
  return lines.join('\n');
}
