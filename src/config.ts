import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { isProxyAddressEntry } from './addresses.js';
import { redactUrl } from './store.js';

/**
 * Configuration: built-in defaults < TOML file < MOLLY_* environment variables.
 * Keys and defaults are those of MollySocket, plus a few of our own (marked "new").
 */

export const SIGNAL_URLS = {
  production: 'wss://chat.signal.org/v1/websocket/',
  staging: 'wss://chat.staging.signal.org/v1/websocket/',
} as const;

/**
 * Signal's servers refuse clients they consider too old (499). The same agent as MollySocket 1.7.1 sends: never
 * older than it, or this relay would be refused before MollySocket is.
 */
export const DEFAULT_USER_AGENT = 'Signal-Android/8.3.4 Android/36';

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
  db: string;
  lease_seconds: number;
  instance_name: string;
}

type Kind =
  | { type: 'string'; check?: (v: string) => string | undefined }
  | { type: 'int'; min: number; max: number }
  | { type: 'bool' }
  | { type: 'enum'; values: readonly string[] }
  | { type: 'list'; check?: (v: string) => string | undefined }
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

const checkEndpointEntry = (v: string): string | undefined => (v === '*' ? undefined : checkUrl(['http', 'https'])(v));
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
    kind: { type: 'string' },
    default: undefined,
    example: '/etc/mollysocket/vapid.key',
    doc: 'File holding the VAPID private key; wins over vapid_privkey.',
  },
  signal_env: {
    kind: { type: 'enum', values: Object.keys(SIGNAL_URLS) },
    default: 'production',
    doc: 'Which Signal chat server to use: production or staging.',
  },
  signal_url: {
    kind: { type: 'string', check: checkUrl(['wss', 'ws']) },
    default: undefined,
    example: 'wss://chat.signal.example/v1/websocket/',
    doc: 'New: the chat websocket URL, overriding signal_env (self-hosted Signal servers, proxies, tests).',
  },
  signal_ca_file: {
    kind: { type: 'string' },
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
    kind: { type: 'list', check: checkEndpointEntry },
    default: ['*'],
    doc: 'UnifiedPush endpoints allowed: URLs (scheme, host, port and userinfo must match) or "*".',
  },
  allowed_uuids: { kind: { type: 'list' }, default: ['*'], doc: 'Account UUIDs allowed to register, or "*".' },
  db: {
    kind: { type: 'string' },
    default: './mollysocket.db',
    doc: 'Path of the SQLite database; new: a postgres:// or postgresql:// URL selects PostgreSQL, shared by several instances.',
  },
  lease_seconds: {
    kind: { type: 'int', min: 2, max: 600 },
    default: 15,
    doc: 'New, PostgreSQL only: how long an instance owns its devices without renewing; a dead instance\'s devices move after this.',
  },
  instance_name: {
    kind: { type: 'string' },
    default: '',
    doc: 'New, PostgreSQL only: this instance\'s stable name (empty: the host name); a restarted instance with the same name gets the same devices back.',
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
  /** Non-fatal problems (unknown keys), each naming the key. */
  warnings: string[];
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export const envName = (key: string): string => `MOLLY_${key.toUpperCase()}`;
/** MOLLY_* variables that are not configuration keys. */
const NON_KEY_ENV = new Set(['MOLLY_CONF', 'MOLLY_LOG']);

/** `default`, the file's path, or the variable's name. */
export function describeSource(source: Source): string {
  if (source === 'default') return 'default';
  return 'file' in source ? source.file : source.env;
}

/** Finds the config file: explicit -c, else MOLLY_CONF, else the first of the standard places that exists. */
export function findConfigFile(explicit: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  const named = explicit ?? env.MOLLY_CONF;
  if (named !== undefined && named !== '') {
    if (!existsSync(named)) {
      const how = explicit !== undefined ? '-c' : 'MOLLY_CONF';
      throw new ConfigError(`config file ${named} (from ${how}) does not exist: create it or fix the path`);
    }
    return named;
  }
  const xdg = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return [join(xdg, 'mollysocket', 'config.toml'), './mollysocket.toml', '/etc/mollysocket/config.toml'].find((p) =>
    existsSync(p),
  );
}

/** Turns an environment string into the key's type (lists: a JSON array, or comma-separated values). */
function fromEnvString(kind: Kind, raw: string): unknown {
  switch (kind.type) {
    case 'proxies': {
      const asBool = fromEnvString({ type: 'bool' }, raw);
      if (typeof asBool === 'boolean') return asBool;
      return /^\s*\d+\s*$/.test(raw) ? Number(raw) : fromEnvString({ type: 'list' }, raw);
    }
    case 'int':
      return /^\s*-?\d+\s*$/.test(raw) ? Number(raw) : raw;
    case 'bool': {
      const v = raw.trim().toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(v)) return true;
      if (['false', '0', 'no', 'off'].includes(v)) return false;
      return raw;
    }
    case 'list': {
      const v = raw.trim();
      if (v.startsWith('[')) {
        try {
          return JSON.parse(v) as unknown;
        } catch {
          return raw;
        }
      }
      return v === '' ? [] : v.split(',').map((s) => s.trim());
    }
    default:
      return raw;
  }
}

function validate(key: ConfigKey, spec: KeySpec, value: unknown, source: Source): unknown {
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
    case 'enum':
      return typeof value === 'string' && kind.values.includes(value)
        ? value
        : fail(`must be one of ${kind.values.join(', ')}`);
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
        const problem = kind.check?.(item);
        if (problem) fail(`has an entry that ${problem}`);
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
      throw new ConfigError(`config file ${file} is not valid TOML: ${(err as Error).message.split('\n')[0]}`);
    }
    for (const [key, value] of Object.entries(table)) {
      if (!(key in CONFIG_KEYS)) {
        warnings.push(`unknown config key "${key}" in ${file} is ignored (known keys: ${Object.keys(CONFIG_KEYS).join(', ')})`);
        continue;
      }
      raw[key] = { value, source: { file } };
    }
  }

  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('MOLLY_') || NON_KEY_ENV.has(name) || value === undefined) continue;
    const key = name.slice('MOLLY_'.length).toLowerCase();
    const spec = (CONFIG_KEYS as Record<string, KeySpec>)[key];
    if (!spec) {
      warnings.push(`unknown environment variable ${name} is ignored`);
      continue;
    }
    raw[key] = { value: fromEnvString(spec.kind, value), source: { env: name } };
  }

  const config: Record<string, unknown> = {};
  const sources: Record<string, Source> = {};
  for (const [key, spec] of Object.entries(CONFIG_KEYS) as [ConfigKey, KeySpec][]) {
    const given = raw[key];
    sources[key] = given?.source ?? 'default';
    config[key] = given === undefined ? spec.default : validate(key, spec, given.value, given.source);
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
      CONFIG_KEYS[key as ConfigKey].secret && value !== undefined ? '(redacted)' : key === 'db' ? redactUrl(value as string) : value,
    ]),
  );
}

const tomlValue = (v: unknown): string =>
  Array.isArray(v) ? `[${v.map((x) => JSON.stringify(x)).join(', ')}]` : JSON.stringify(v);

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
