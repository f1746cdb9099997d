import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ConfigError, loadConfig, type Config, type LoadedConfig } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { clusterVapidKey, resolveVapidKey, VapidKeyError, type ResolvedKey } from '../push/vapid.js';
import type { PostgresStore } from '../store-pg.js';
import { isPostgresUrl, openStore, StoreError, type Store } from '../store.js';

/** Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error. */
export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

/** A mistake in the command's arguments: one line that names the argument and the fix; exit 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The command ran but did not achieve what it was asked to; exit 1. */
export class FailureError extends Error {
  override name = 'FailureError';
}

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

const warn = (message: string): void => void process.stderr.write(`mollysocket: warning: ${message}\n`);

/** The configuration named by -c / MOLLY_CONF; its warnings printed as plain lines. */
export function loadFor(cmd: Command): LoadedConfig {
  const opts = globals(cmd);
  const loaded = loadConfig({ ...(opts.config !== undefined && { file: opts.config }) });
  for (const warning of loaded.warnings) warn(warning);
  return loaded;
}

/** For the server: the configuration, and a logger at the -v level that also carries the warnings. */
export function loadForServer(cmd: Command): { loaded: LoadedConfig; log: Logger } {
  const opts = globals(cmd);
  const log = createLogger(opts.verbose);
  const loaded = loadConfig({ ...(opts.config !== undefined && { file: opts.config }) });
  for (const warning of loaded.warnings) log.warn(warning);
  return { loaded, log };
}

/** Runs `fn` with the store open, and closes it. */
export async function withStore<T>(config: Config, fn: (store: Store) => T | Promise<T>): Promise<T> {
  const store = await openStore(config.db);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/**
 * The key the server uses; kept (generated first if need be) so that what Molly is shown stays valid. On PostgreSQL,
 * the instances' shared key in the database.
 */
export async function vapidKey(config: Config): Promise<ResolvedKey> {
  if (isPostgresUrl(config.db)) return withStore(config, (store) => clusterVapidKey(config, store as PostgresStore));
  const key = resolveVapidKey(config, { generate: true });
  if (key.source === 'generated') warn(`generated a VAPID key and kept it in ${key.path}: back this file up with the database`);
  return key;
}

/** Parses a device id argument: a whole number from 1. */
export function parseDeviceId(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 2 ** 31 - 1) {
    throw new InvalidArgumentError('it must be a whole number from 1 (the device id Molly shows)');
  }
  return Number(value);
}

/** `6e3b****-****-****-****-************`: enough to tell rows apart in a pasted support request. */
export const maskUuid = (uuid: string): string => uuid.slice(0, 4) + uuid.slice(4).replace(/[0-9a-f]/gi, '*');

/** Unix seconds (or ms with `ms`) as `2026-11-21 23:58:02Z`; 0 or null: `never`. */
export function formatTime(value: number | null, unit: 's' | 'ms' = 's'): string {
  if (!value) return 'never';
  return new Date(unit === 's' ? value * 1000 : value).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** Rows as aligned columns, the first row being the header. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

export const print = (text: string): void => void process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);

/** One line for the user, and the exit code that goes with the kind of error. */
export function reportError(err: unknown, commandPath: string): number {
  if (err instanceof CommanderError) {
    if (err.exitCode === 0) return EXIT.ok;
    const message = err.message.replace(/^error: /, '');
    process.stderr.write(`mollysocket: ${message} (see \`mollysocket ${commandPath} --help\`)\n`);
    return EXIT.usage;
  }
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`mollysocket: ${message}\n`);
  const usage = err instanceof ConfigError || err instanceof VapidKeyError || err instanceof StoreError || err instanceof UsageError;
  return usage ? EXIT.usage : EXIT.failure;
}
