import { hostname } from 'node:os';
import type { Command } from 'commander';
import { handOverTimeoutMs, startServer, type RunningServer } from '../server.js';
import type { ServerLock } from '../store/lock.js';
import { claimServer } from '../store/open.js';
import { isPostgresUrl } from '../store/location.js';
import { loadForServer } from './common.js';

/** How long shutdown may take before the process exits anyway (plus the hand-over, with several instances). */
export const SHUTDOWN_DEADLINE_MS = 4_000;

export function registerServer(program: Command): void {
  program
    .command('server')
    .description('run the web server and the Signal connections')
    .action(async (_opts, cmd: Command) => {
      const { loaded, log } = loadForServer(cmd);
      let running: RunningServer | undefined;
      let lock: ServerLock | undefined;
      let stopping = false;
      // The lock is let go only once the store records the clean stop (referenced here, it is never collected before).
      const stop = (server: RunningServer): void => void server.close().then(() => (lock?.release(), process.exit(0)));
      // Installed before starting: a SIGTERM during start-up also ends in an orderly shutdown.
      const shutdown = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        log.info({ signal }, 'shutting down');
        const handOver = isPostgresUrl(loaded.config.db) ? handOverTimeoutMs(loaded.config) : 0;
        setTimeout(() => process.exit(0), SHUTDOWN_DEADLINE_MS + handOver).unref();
        if (running) stop(running);
      };
      process.once('SIGTERM', shutdown);
      process.once('SIGINT', shutdown);
      // A promise nobody awaited failed: a bug in one step, not a reason to drop every other user's socket.
      process.on('unhandledRejection', (err) => log.error({ err }, 'unexpected failure (a bug: please report it); the server keeps running'));
      // A thrown exception leaves the state unknown: log it in the log's format, then exit for the supervisor to restart.
      process.on('uncaughtException', (err) => {
        log.fatal({ err }, 'unexpected exception (a bug: please report it); exiting');
        process.exit(1);
      });
      // One server per database, decided before the store is opened; the OS lets go of the lock when the process ends.
      lock = await claimServer(loaded.config.db, loaded.config.instance_name || hostname(), loaded.config.lease_seconds * 1000);
      running = await startServer(loaded.config, log);
      if (stopping) stop(running);
    });
}
