import { Command, CommanderError } from 'commander';
import { ConfigError, loadConfig, type LoadedConfig } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { VapidKeyError } from '../push/vapid.js';
import { StoreError } from '../store.js';

/** Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error. */
export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

export interface GlobalOptions {
  config?: string;
  verbose: number;
}

/** The root command's options (-c, -v), from any subcommand. */
export function globals(cmd: Command): GlobalOptions {
  let root = cmd;
  while (root.parent) root = root.parent;
  return root.opts<GlobalOptions>();
}

/** Loads the configuration named by -c / MOLLY_CONF, and a logger at the -v level; warnings go to the log. */
export function setup(cmd: Command): { loaded: LoadedConfig; log: Logger } {
  const opts = globals(cmd);
  const log = createLogger(opts.verbose);
  const loaded = loadConfig({ ...(opts.config !== undefined && { file: opts.config }) });
  for (const warning of loaded.warnings) log.warn(warning);
  return { loaded, log };
}

/** One line for the user, and the exit code that goes with the kind of error. */
export function reportError(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`mollysocket: ${message}\n`);
  return err instanceof ConfigError || err instanceof VapidKeyError || err instanceof StoreError ? EXIT.usage : EXIT.failure;
}
