import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ConfigError, describeSource, loadConfig, type LoadedConfig } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { canonicalUuid, isUuid } from '../policy.js';
import { keptKeyPath, resolveVapidKey, VapidKeyError, type ResolvedKey } from '../push/vapid.js';
import { isPostgresUrl } from '../store/location.js';
import { openStore as openDatabase, type Backend } from '../store/open.js';
import { StoreError, type OpenMode, type Store } from '../store/store.js';

/** Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error. */
const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

/** A mistake in the command's arguments: one line that names the argument and the fix; exit 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The command ran but did not achieve what it was asked to; exit 1. */
export class FailureError extends Error {
  override name = 'FailureError';
}

interface GlobalOptions {
  config?: string;
  verbose: number;
}

/** The root command's options (-c, -v), from any subcommand. */
function globals(cmd: Command): GlobalOptions {
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

/** For the server: the configuration, and a logger at the -v level, in the configured format, that carries the warnings. */
export function loadForServer(cmd: Command): { loaded: LoadedConfig; log: Logger } {
  const opts = globals(cmd);
  const loaded = loadConfig({ ...(opts.config !== undefined && { file: opts.config }) });
  const log = createLogger({ verbosity: opts.verbose, format: loaded.config.log_format });
  for (const warning of loaded.warnings) log.warn(warning);
  return { loaded, log };
}

/** Whether nothing is at `path` (a file this user may not see is not missing: opening it says why it fails). */
function isMissing(path: string): boolean {
  try {
    statSync(path);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

/** `"./mollysocket.db" (default)`: the db setting and where it came from, for messages about the database. */
const dbSetting = (loaded: LoadedConfig): string => `db = ${JSON.stringify(loaded.config.db)} from ${describeSource(loaded.sources.db)}`;

/**
 * Opens the database as `mode` says. Only `create` makes a new file: any other command run where there is no
 * database (the wrong directory, another -c) stops with the path it looked at, instead of creating an empty one.
 */
async function openStore(loaded: LoadedConfig, mode: OpenMode): Promise<Backend> {
  const { db } = loaded.config;
  if (mode !== 'create' && !isPostgresUrl(db) && isMissing(db)) {
    throw new UsageError(
      `no database at ${resolve(db)} (${dbSetting(loaded)}): run this command where the server keeps its database, or point db, MOLLY_DB or -c at it`,
    );
  }
  const backend = await openDatabase(db, { mode });
  const { migratedFrom } = backend.report;
  if (migratedFrom) warn(`migrated the MollySocket database ${db} to this version's schema; the file as it was is kept as ${migratedFrom.backup}`);
  return backend;
}

/** Whether the database `db` names is there to open: a PostgreSQL server always counts, a SQLite file only once it exists. */
export const hasDatabase = (loaded: LoadedConfig): boolean => isPostgresUrl(loaded.config.db) || !isMissing(loaded.config.db);

/** Runs `fn` with the store open as `mode` says (and what its backend can do besides), and closes it. */
export async function withStore<T>(loaded: LoadedConfig, mode: OpenMode, fn: (store: Store, backend: Backend) => T | Promise<T>): Promise<T> {
  const backend = await openStore(loaded, mode);
  try {
    return await fn(backend.store, backend);
  } finally {
    await backend.store.close();
  }
}

/** Where a key came from, in the settings' words. */
function describeKey(key: ResolvedKey | undefined, loaded: LoadedConfig): string {
  if (key === undefined) return 'none (neither vapid_privkey nor vapid_key_file is set, and there is no kept vapid.key)';
  switch (key.source) {
    case 'vapid_key_file':
      return `vapid_key_file ${key.path} (from ${describeSource(loaded.sources.vapid_key_file)})`;
    case 'vapid_privkey':
      return `vapid_privkey (from ${describeSource(loaded.sources.vapid_privkey)})`;
    default:
      return `the kept key ${key.path}`;
  }
}

const shortKey = (publicKey: string): string => `${publicKey.slice(0, 12)}…`;

/**
 * The key this command shows or signs with, which must be the one the server on this database signs with (it records
 * it at start): a QR code or a test push with another key would not work. Without a key of its own and with no server
 * recorded yet, the key is generated and kept where the server will find it, as the server itself would.
 */
export async function vapidKey(loaded: LoadedConfig, { store, vapidKey: kept }: Backend): Promise<ResolvedKey> {
  const recorded = await store.recordedVapidKey();
  // Several instances on PostgreSQL share the key kept in the database (or the one configured on all of them).
  const key = await kept.resolve(loaded.config, { generate: recorded === undefined });
  if (recorded !== undefined && key?.publicKey !== recorded) {
    const own =
      key === undefined ? `this command has ${describeKey(key, loaded)}` : `this command's key is ${shortKey(key.publicKey)}, from ${describeKey(key, loaded)}`;
    throw new UsageError(
      `the server on ${store.location} signs with VAPID key ${shortKey(recorded)}, but ${own}: ` +
        'give this command the settings the server has (the same -c file, or vapid_privkey / vapid_key_file)',
    );
  }
  if (key!.source === 'generated') warn(`generated a VAPID key and kept it in ${key!.path}: back this file up with the database`);
  return key!;
}

/**
 * The key of a command that needs nothing else (`qr-code`, `vapid pub`, `vapid test`). As in MollySocket, it works
 * before any server ran (an air-gapped set-up shows the QR code first) and then creates nothing; once there is a
 * database, its key must be the one the server there signs with (see vapidKey).
 */
export async function commandKey(loaded: LoadedConfig): Promise<ResolvedKey> {
  if (hasDatabase(loaded)) return withStore(loaded, 'read', (_store, backend) => vapidKey(loaded, backend));
  const key = resolveVapidKey(loaded.config, { generate: false });
  if (key === undefined) {
    throw new UsageError(
      `no VAPID key, and no database at ${resolve(loaded.config.db)} (${dbSetting(loaded)}): set vapid_privkey or ` +
        'vapid_key_file as the server has them, or run this command where the server keeps its database',
    );
  }
  return key;
}

/** The key in effect for `config`, without generating one: its public half and where it came from (else `kept`). */
export function describeKeyInEffect(
  loaded: LoadedConfig,
  kept = `none yet: the first server start generates one and keeps it in ${keptKeyPath(loaded.config)}`,
): string {
  const key = resolveVapidKey(loaded.config, { generate: false });
  if (key === undefined) return kept;
  return `${key.publicKey} (${describeKey(key, loaded)})`;
}

/** Parses an account uuid argument, in the one spelling the store uses. */
export function parseUuid(value: string): string {
  if (!isUuid(value)) throw new InvalidArgumentError('it is not a UUID: give the account UUID Molly shows, like 6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e');
  return canonicalUuid(value);
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
  return new Date(unit === 's' ? value * 1000 : value)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, 'Z');
}

/** A time in JSON output: unix seconds (every --json output uses them), null for never. */
export function jsonTime(value: number | null, unit: 's' | 'ms' = 's'): number | null {
  if (!value) return null;
  return unit === 's' ? value : Math.floor(value / 1000);
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
    if (err.code === 'commander.help') return EXIT.usage; // a group without its subcommand: its help is already shown
    const message = err.message.replace(/^error: /, '').replace(/\n\(Did you mean (.*)\?\)/, ' (did you mean $1?)');
    const help = commandPath === '' ? 'mollysocket --help' : `mollysocket ${commandPath} --help`;
    process.stderr.write(`mollysocket: ${message} (see \`${help}\`)\n`);
    return EXIT.usage;
  }
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`mollysocket: ${message}\n`);
  const usage = err instanceof ConfigError || err instanceof VapidKeyError || err instanceof StoreError || err instanceof UsageError;
  return usage ? EXIT.usage : EXIT.failure;
}
