import type { Command } from 'commander';
import { startServer } from '../server.js';
import { loadForServer } from './common.js';

/** How long shutdown may take before the process exits anyway. */
const SHUTDOWN_DEADLINE_MS = 4_000;

export function registerServer(program: Command): void {
  program
    .command('server')
    .description('run the web server and the Signal connections')
    .action(async (_opts, cmd: Command) => {
      const { loaded, log } = loadForServer(cmd);
      const running = await startServer(loaded.config, log);
      const shutdown = (signal: string): void => {
        log.info({ signal }, 'shutting down');
        setTimeout(() => process.exit(0), SHUTDOWN_DEADLINE_MS).unref();
        void running.close().then(() => process.exit(0));
      };
      process.once('SIGTERM', shutdown);
      process.once('SIGINT', shutdown);
    });
}
