import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { closest, distance } from 'fastest-levenshtein';
import { parse as parseToml, TomlError } from 'smol-toml';
import { EnvValueError, parseEnvValue, type EnvValue } from './envValue.js';
import { isProxyAddressEntry } from './addresses.js';
import { redactUrl } from './store/location.js';

/**
 * Configuration: built-in defaults < TOML file < MOLLY_* environment variables.
 * Keys and defaults are those of MollySocket, plus a few of our own (marked "new").
 */

const SIGNAL_URLS = {
  production: 'wss://chat.signal.org/v1/websocket/',
  staging: 'wss://chat.staging.signal.org/v1/websocket/',
} as const;

/**
 * Signal's servers refuse clients they consider too old (499). The same agent as MollySocket 1.7.1 sends: never
 * older than it, or this relay would be refused before MollySocket is.
 */
const DEFAULT_USER_AGENT = 'Signal-Android/8.3.4 Android/36';

export interface Config {
  host: string;
  port: number;
  webserver: boolean;
  url: string | undefined;
  /** false; true (one hop: the nearest proxy); a number of hops; or the proxies' addresses and ranges. */
  trust_proxy: boolean | number | readonly string[];
  registration_rate_limit: number;
  metrics_host: string;
  metrics_port: number | undefined;
  vapid_privkey: string | undefined;
  vapid_key_file: string | undefined;
  signal_env: keyof typeof SIGNAL_URLS;
  signal_url: string | undefined;
  signal_ca_file: string | undefined;
  user_agent: string;
  backoff_max_seconds: number;
  connect_rate: number;
  connect_concurrency: number;
  push_min_interval_ms: number;
  push_timeout_ms: number;
  push_give_up_hours: number;
  allowed_endpoints: readonly string[];
  allowed_uuids: readonly string[];
  max_connections: number;
  forbidden_retention_days: number;
  db: string;
  db_listen_url: string | undefined;
  lease_seconds: number;
  instance_name: string;
  log_format: 'text' | 'json';
}

type Kind =
  | { type: 'string'; check?: (v: string) => string | undefined }
  | { type: 'int'; min: number; max: number }
  | { type: 'bool' }
  /** Matched without regard to case (MollySocket spells `Production`), kept in lower case. */
  | { type: 'enum'; values: readonly string[] }
  /** `ignore`: why an entry can never match; such an entry is a warning, not an error (MollySocket ignores it). */
  | { type: 'list'; ignore?: (v: string) => string | undefined }
  /** trust_proxy: a boolean, a number of hops, or a list of addresses. */
  | { type: 'proxies' };

interface KeySpec {
  kind: Kind;
  default: unknown;
  doc: string;
  secret?: boolean;
  /** For keys unset by default: a value to show in config.example.toml. */
  example?: unknown;
}

const checkUrl =
  (schemes: string[]) =>
  (v: string): string | undefined => {
    let url: URL;
    try {
      url = new URL(v);
    } catch {
      return `must be a URL (${schemes.join(' or ')})`;
    }
    return schemes.includes(url.protocol.slice(0, -1)) ? undefined : `must be a ${schemes.join(' or ')} URL`;
  };

const unusableEndpointEntry = (v: string): string | undefined =>
  v === '*' || checkUrl(['http', 'https'])(v) === undefined ? undefined : 'is not "*" or an http(s) URL';
const checkReadableFile = (v: string): string | undefined => {
  try {
    accessSync(v, constants.R_OK);
    return undefined;
  } catch (err) {
    return `names a file that cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'}): fix the path or the file's permissions`;
  }
};
const checkVapidKey = (v: string): string | undefined =>
  /^[A-Za-z0-9_-]{43}$/.test(v) ? undefined : 'must be 43 characters of unpadded base64url (run `mollysocket vapid gen`)';

export const CONFIG_KEYS: { readonly [K in keyof Config]: KeySpec } = {
  host: { kind: { type: 'string' }, default: '127.0.0.1', doc: 'Address the web server listens on.' },
  port: { kind: { type: 'int', min: 0, max: 65535 }, default: 8020, doc: 'Port the web server listens on (0: any free port).' },
  webserver: { kind: { type: 'bool' }, default: true, doc: 'Run the web server; false for air-gapped mode.' },
  url: {
    kind: { type: 'string', check: checkUrl(['https']) },
    default: undefined,
    example: 'https://molly.example.org/',
    doc: 'New: the public https URL of this server, for the QR code (reverse proxies on a sub-path). Unset: taken from the request.',
  },
  trust_proxy: {
    kind: { type: 'proxies' },
    default: false,
    doc:
      'New: believe X-Forwarded-For/Proto/Host/Prefix from reverse proxies: true trusts one hop (the nearest proxy), ' +
      'a number that many hops, a list the proxies\' addresses or ranges (["127.0.0.1", "10.0.0.0/8"]); only when one is in front.',
  },
  registration_rate_limit: {
    kind: { type: 'int', min: 0, max: 1_000_000 },
    default: 120,
    doc:
      'New: registrations per minute per client address (0: no limit). Molly registers on every app unlock. Without ' +
      'trust_proxy, clients at loopback or private addresses (a reverse proxy) are not limited.',
  },
  metrics_host: {
    kind: { type: 'string' },
    default: '127.0.0.1',
    doc: 'New: address of the separate listener for /health and /metrics, when metrics_port is set.',
  },
  metrics_port: {
    kind: { type: 'int', min: 0, max: 65535 },
    default: undefined,
    example: 9090,
    doc:
      'New: serve /health and /metrics on this port only, to keep them private. Unset: they are public on the web ' +
      'port, as in MollySocket (counts only, never an account).',
  },
  vapid_privkey: {
    kind: { type: 'string', check: checkVapidKey },
    default: undefined,
    example: '<the output of mollysocket vapid gen>',
    secret: true,
    doc: 'VAPID private key (43 characters of base64url). Unset: a key is generated and kept next to the database.',
  },
  vapid_key_file: {
    kind: { type: 'string', check: checkReadableFile },
    default: undefined,
    example: '/etc/mollysocket/vapid.key',
    doc: 'File holding the VAPID private key; wins over vapid_privkey.',
  },
  signal_env: {
    kind: { type: 'enum', values: Object.keys(SIGNAL_URLS) },
    default: 'production',
    doc: 'Which Signal chat server to use: production or staging (MollySocket spells them Production, Staging).',
  },
  signal_url: {
    kind: { type: 'string', check: checkUrl(['wss', 'ws']) },
    default: undefined,
    example: 'wss://chat.signal.example/v1/websocket/',
    doc: 'New: the chat websocket URL, overriding signal_env (self-hosted Signal servers, proxies, tests).',
  },
  signal_ca_file: {
    kind: { type: 'string', check: checkReadableFile },
    default: undefined,
    example: '/etc/mollysocket/signal-ca.pem',
    doc: "New: a PEM file of CA certificates trusted instead of Signal's pinned roots.",
  },
  user_agent: {
    kind: { type: 'string' },
    default: DEFAULT_USER_AGENT,
    doc: 'New: User-Agent sent to the Signal server.',
  },
  backoff_max_seconds: {
    kind: { type: 'int', min: 1, max: 86_400 },
    default: 300,
    doc: 'New: the longest wait between reconnection attempts to Signal, in seconds.',
  },
  connect_rate: {
    kind: { type: 'int', min: 1, max: 100_000 },
    default: 100,
    doc: 'New: Signal connections started per second at most (start-up ramp, recovery after an outage).',
  },
  connect_concurrency: {
    kind: { type: 'int', min: 1, max: 100_000 },
    default: 50,
    doc: 'New: Signal handshakes in progress at once at most.',
  },
  push_min_interval_ms: {
    kind: { type: 'int', min: 0, max: 60_000 },
    default: 1_000,
    doc: 'New: urgent messages closer together than this share one push (a trailing push follows the last).',
  },
  push_timeout_ms: {
    kind: { type: 'int', min: 100, max: 120_000 },
    default: 10_000,
    doc: 'New: how long one push request may take before it counts as failed and is retried.',
  },
  push_give_up_hours: {
    kind: { type: 'int', min: 1, max: 720 },
    default: 24,
    doc: 'New: a push still failing after this many hours is given up, with a warning.',
  },
  allowed_endpoints: {
    kind: { type: 'list', ignore: unusableEndpointEntry },
    default: ['*'],
    doc: 'UnifiedPush endpoints allowed: URLs (scheme, host, port and userinfo must match) or "*". An entry that is not an http(s) URL never matches.',
  },
  allowed_uuids: { kind: { type: 'list' }, default: ['*'], doc: 'Account UUIDs allowed to register, or "*".' },
  max_connections: {
    kind: { type: 'int', min: 0, max: 100_000_000 },
    default: 0,
    doc:
      'New: the most connections stored (0: no limit). Beyond it, registrations of new devices answer internal_error, ' +
      'so that Molly tries again later, and the log says why.',
  },
  forbidden_retention_days: {
    kind: { type: 'int', min: 1, max: 36_500 },
    default: 30,
    doc:
      'New: a connection forbidden this many days (Signal refused its credentials, or its push endpoint was gone) and ' +
      'not registered again since is removed; Molly registering it again later starts afresh.',
  },
  db: {
    kind: { type: 'string' },
    default: './mollysocket.db',
    doc: 'Path of the SQLite database; new: a postgres:// or postgresql:// URL selects PostgreSQL, shared by several instances.',
  },
  db_listen_url: {
    kind: { type: 'string', check: checkUrl(['postgres', 'postgresql']) },
    default: undefined,
    example: 'postgres://mollysocket@db.internal:5432/mollysocket',
    doc: "New, PostgreSQL only: a direct connection for the instances' notifications (LISTEN), when db goes through PgBouncer in transaction mode, which drops them; unset: db.",
  },
  lease_seconds: {
    kind: { type: 'int', min: 2, max: 600 },
    default: 15,
    doc: "New, PostgreSQL only: how long an instance owns its devices without renewing; a dead instance's devices move after this.",
  },
  instance_name: {
    kind: { type: 'string' },
    default: '',
    doc: "New, PostgreSQL only: this instance's stable name (empty: the host name); a restarted instance with the same name gets the same devices back.",
  },
  log_format: {
    kind: { type: 'enum', values: ['text', 'json'] },
    default: 'text',
    doc: 'New: log lines as text (time, level, message, fields) or as JSON objects, one per line.',
  },
};

export type ConfigKey = keyof Config;
export type Source = 'default' | { file: string } | { env: string };

export interface LoadedConfig {
  config: Readonly<Config>;
  /** Where each value came from, for `mollysocket config`. */
  sources: Readonly<Record<ConfigKey, Source>>;
  /** The file read, if any. */
  file: string | undefined;
  /** Non-fatal problems (unknown keys, entries that never match), each naming the key. */
  warnings: string[];
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export const envName = (key: string): string => `MOLLY_${key.toUpperCase()}`;
/** The part of a variable's name after `MOLLY_`, matched without regard to case as figment does; else undefined. */
const afterPrefix = (name: string): string | undefined => (/^molly_/i.test(name) ? name.slice('MOLLY_'.length).trim().toLowerCase() : undefined);
/** MOLLY_* variables that are not configuration keys. */
const NON_KEY_ENV = new Set(['conf', 'log']);

/** ` (did you mean "port"?)` when a known name is close to a mistyped one. */
function suggestion(name: string, known: string[], spell: (k: string) => string = (k) => k): string {
  const best = closest(name, known);
  return distance(name, best) <= Math.max(2, Math.floor(name.length / 3)) ? ` (did you mean ${spell(best)}?)` : '';
}

/** `default`, the file's path, or the variable's name. */
export function describeSource(source: Source): string {
  if (source === 'default') return 'default';
  return 'file' in source ? source.file : source.env;
}

/** Finds the config file: explicit -c, else MOLLY_CONF, else the first of the standard places that exists. */
function findConfigFile(explicit: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  const named = explicit ?? env.MOLLY_CONF;
  if (named !== undefined && named !== '') {
    if (!existsSync(named)) {
      const how = explicit !== undefined ? '-c' : 'MOLLY_CONF';
      throw new ConfigError(`config file ${named} (from ${how}) does not exist: create it or fix the path`);
    }
    return named;
  }
  const xdg = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return [join(xdg, 'mollysocket', 'config.toml'), './mollysocket.toml', '/etc/mollysocket/config.toml'].find((p) => existsSync(p));
}

/**
 * Turns an environment value into the key's type. Beyond what figment reads, and only where no figment value could
 * mean something else: a single string for a list is a comma-separated list, 0 and 1 are booleans, and a number
 * given for a text key is its text.
 */
function fromEnv(kind: Kind, text: string, value: EnvValue): unknown {
  switch (kind.type) {
    case 'bool':
      return value === 1 ? true : value === 0 ? false : value;
    case 'string':
    case 'enum':
      return typeof value === 'number' ? text.trim() : value;
    case 'proxies':
      if (value === 0 || value === 1) return value === 1; // as for booleans; one hop either way
      return typeof value === 'string' ? value.split(',').map((s) => s.trim()) : value;
    case 'list': {
      if (typeof value === 'string') return value === '' ? [] : value.split(',').map((s) => s.trim());
      return Array.isArray(value) ? value.map((v) => (typeof v === 'number' ? String(v) : v)) : value;
    }
    default:
      return value;
  }
}

/** A variable's text as MollySocket reads it; a text it would refuse stops here, naming the variable. */
function envValue(name: string, spec: KeySpec, text: string): EnvValue {
  try {
    return parseEnvValue(text);
  } catch (err) {
    if (!(err instanceof EnvValueError)) throw err;
    const got = spec.secret ? `${text.trim().length} characters` : JSON.stringify(text.trim());
    throw new ConfigError(`environment variable ${name} does not parse: ${err.message} (got ${got})`, { cause: err });
  }
}

function validate(key: ConfigKey, spec: KeySpec, value: unknown, source: Source, warnings: string[]): unknown {
  const kind = spec.kind;
  // A secret's value is never repeated: the error goes to the journal or `docker logs`.
  const got = !spec.secret ? JSON.stringify(value) : typeof value === 'string' ? `${value.length} characters` : `a ${typeof value}`;
  const fail = (what: string): never => {
    throw new ConfigError(`config key "${key}" ${what} (got ${got} from ${describeSource(source)})`);
  };
  switch (kind.type) {
    case 'string': {
      if (typeof value !== 'string') return fail('must be a string');
      const problem = kind.check?.(value);
      return problem ? fail(problem) : value;
    }
    case 'int':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < kind.min || value > kind.max) {
        return fail(`must be an integer from ${kind.min} to ${kind.max}`);
      }
      return value;
    case 'bool':
      return typeof value === 'boolean' ? value : fail('must be true or false');
    case 'enum': {
      const known = typeof value === 'string' ? kind.values.find((v) => v === value.toLowerCase()) : undefined;
      return known ?? fail(`must be one of ${kind.values.join(', ')}`);
    }
    case 'proxies': {
      if (typeof value === 'boolean') return value;
      if (typeof value === 'number') {
        return Number.isInteger(value) && value >= 0 && value <= 100 ? value : fail('must be a number of hops from 0 to 100');
      }
      const list = typeof value === 'string' ? [value] : value;
      if (!Array.isArray(list) || !list.every((v) => typeof v === 'string' && isProxyAddressEntry(v))) {
        return fail('must be true, false, a number of hops, or a list of IP addresses or CIDR ranges, like ["127.0.0.1"]');
      }
      return Object.freeze([...(list as string[])]);
    }
    case 'list': {
      // MollySocket users write `allowed_uuids = "*"` as often as `["*"]`.
      const list = typeof value === 'string' ? [value] : value;
      if (!Array.isArray(list) || !list.every((v) => typeof v === 'string')) {
        return fail('must be a list of strings, like ["*"]');
      }
      for (const item of list as string[]) {
        const problem = kind.ignore?.(item);
        if (problem)
          warnings.push(`config key "${key}" has an entry ${JSON.stringify(item)} (from ${describeSource(source)}) that ${problem}: it never matches`);
      }
      return Object.freeze([...(list as string[])]);
    }
  }
}

/** Loads, validates and freezes the configuration. Throws ConfigError naming the key and the fix. */
export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): LoadedConfig {
  const env = opts.env ?? process.env;
  const file = findConfigFile(opts.file, env);
  const warnings: string[] = [];
  const raw: Record<string, { value: unknown; source: Source }> = {};

  if (file !== undefined) {
    let table: Record<string, unknown>;
    try {
      table = parseToml(readFileSync(file, 'utf8'));
    } catch (err) {
      if (!(err instanceof TomlError)) throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`, { cause: err });
      const reason = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      throw new ConfigError(`config file ${file} is not valid TOML at line ${err.line}, column ${err.column}: ${reason}`, { cause: err });
    }
    const known = Object.keys(CONFIG_KEYS);
    for (const [key, value] of Object.entries(table)) {
      if (!(key in CONFIG_KEYS)) {
        warnings.push(`unknown config key "${key}" in ${file} is ignored${suggestion(key, known, (k) => `"${k}"`)}`);
        continue;
      }
      raw[key] = { value, source: { file } };
    }
  }

  for (const [name, text] of Object.entries(env)) {
    const key = afterPrefix(name);
    if (key === undefined || NON_KEY_ENV.has(key) || text === undefined) continue;
    const spec = (CONFIG_KEYS as Record<string, KeySpec>)[key];
    if (!spec) {
      warnings.push(`unknown environment variable ${name} is ignored${suggestion(key, Object.keys(CONFIG_KEYS), envName)}`);
      continue;
    }
    const value = envValue(name, spec, text);
    if (value === null) continue; // empty: unset
    raw[key] = { value: fromEnv(spec.kind, text, value), source: { env: name } };
  }

  // The key systemd hands over as the credential MollySocket's units name vapid.key, when no other is configured: what
  // a unit's MOLLY_VAPID_KEY_FILE=%d/vapid.key says, for commands run with the credential alone (INSTALL.md).
  const credential = env.CREDENTIALS_DIRECTORY ? join(env.CREDENTIALS_DIRECTORY, 'vapid.key') : undefined;
  if (credential !== undefined && raw.vapid_key_file === undefined && raw.vapid_privkey === undefined && existsSync(credential)) {
    raw.vapid_key_file = { value: credential, source: { env: 'CREDENTIALS_DIRECTORY' } };
  }

  const config: Record<string, unknown> = {};
  const sources: Record<string, Source> = {};
  for (const [key, spec] of Object.entries(CONFIG_KEYS) as [ConfigKey, KeySpec][]) {
    const given = raw[key];
    sources[key] = given?.source ?? 'default';
    config[key] = given === undefined ? spec.default : validate(key, spec, given.value, given.source, warnings);
  }

  return {
    config: Object.freeze(config) as unknown as Config,
    sources: Object.freeze(sources) as Record<ConfigKey, Source>,
    file,
    warnings,
  };
}

export const signalUrl = (config: Config): string => config.signal_url ?? SIGNAL_URLS[config.signal_env];

/** The configuration with secret values replaced, safe to print or log. */
export function redactedConfig(config: Config): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(config).map(([key, value]) => [
      key,
      CONFIG_KEYS[key as ConfigKey].secret && value !== undefined
        ? '(redacted)'
        : (key === 'db' || key === 'db_listen_url') && value !== undefined
          ? redactUrl(value as string)
          : value,
    ]),
  );
}

const tomlValue = (v: unknown): string => (Array.isArray(v) ? `[${v.map((x) => JSON.stringify(x)).join(', ')}]` : JSON.stringify(v));

/** config.example.toml: every key commented out with its default (or an example), its meaning and variable. */
export function configExample(): string {
  const lines = [
    '# MollySocket configuration: every key, with its default. Uncomment what you change.',
    '# Precedence: built-in defaults < this file < MOLLY_* environment variables (the key in capitals: port -> MOLLY_PORT).',
    '# Where it is read from: -c FILE, else $MOLLY_CONF, else $XDG_CONFIG_HOME/mollysocket/config.toml,',
    '# ./mollysocket.toml, /etc/mollysocket/config.toml (the first that exists).',
    '',
  ];
  for (const [key, spec] of Object.entries(CONFIG_KEYS) as [string, KeySpec][]) {
    lines.push(`# ${spec.doc} (${envName(key)})`);
    if (spec.default === undefined) lines.push('# Unset by default. Example:');
    lines.push(`# ${key} = ${tomlValue(spec.default ?? spec.example)}`, '');
  }
  return lines.join('\n');
}
