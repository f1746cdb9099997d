import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, signalUrl } from '../../src/config.js';
import { tempDir } from '../helpers/index.js';

const noFile = { XDG_CONFIG_HOME: '/nonexistent', HOME: '/nonexistent' };

function withFile(toml: string): string {
  const file = join(tempDir(), 'config.toml');
  writeFileSync(file, toml);
  return file;
}

describe('config', () => {
  it('has MollySocket defaults when nothing is set', () => {
    const { config, file, warnings } = loadConfig({ env: noFile });
    expect(file).toBeUndefined();
    expect(warnings).toEqual([]);
    expect(config).toMatchObject({
      host: '127.0.0.1',
      port: 8020,
      webserver: true,
      signal_env: 'production',
      allowed_endpoints: ['*'],
      allowed_uuids: ['*'],
      db: './mollysocket.db',
    });
    expect(config.vapid_privkey).toBeUndefined();
    expect(signalUrl(config)).toBe('wss://chat.signal.org/v1/websocket/');
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('reads trust_proxy as a boolean, a number of hops or a list of proxy addresses, from the file and the environment', () => {
    const trust = (toml: string, env: Record<string, string> = {}) => loadConfig({ file: withFile(toml), env: { ...noFile, ...env } }).config.trust_proxy;
    expect(trust('trust_proxy = true')).toBe(true);
    expect(trust('trust_proxy = 2')).toBe(2);
    expect(trust('trust_proxy = ["127.0.0.1", "10.0.0.0/8", "::1", "loopback"]')).toEqual(['127.0.0.1', '10.0.0.0/8', '::1', 'loopback']);
    expect(trust('', { MOLLY_TRUST_PROXY: 'true' })).toBe(true);
    expect(trust('', { MOLLY_TRUST_PROXY: '1' })).toBe(true); // the boolean spelling wins: one hop either way
    expect(trust('', { MOLLY_TRUST_PROXY: '3' })).toBe(3);
    expect(trust('', { MOLLY_TRUST_PROXY: '172.16.0.0/12,127.0.0.1' })).toEqual(['172.16.0.0/12', '127.0.0.1']);
    expect(() => trust('trust_proxy = ["proxy.example"]')).toThrow(/config key "trust_proxy" must be true, false, a number of hops, or a list of IP addresses/);
    expect(() => trust('trust_proxy = -1')).toThrow(/trust_proxy/);
  });

  it('applies defaults < TOML file < MOLLY_* environment', () => {
    const file = withFile('port = 9000\nhost = "0.0.0.0"\nallowed_uuids = ["a"]\nsignal_env = "staging"\n');
    const { config, sources } = loadConfig({ file, env: { ...noFile, MOLLY_PORT: '9100', MOLLY_ALLOWED_UUIDS: '["b","c"]' } });
    expect(config.port).toBe(9100);
    expect(config.host).toBe('0.0.0.0');
    expect(config.allowed_uuids).toEqual(['b', 'c']);
    expect(signalUrl(config)).toBe('wss://chat.staging.signal.org/v1/websocket/');
    expect(sources.port).toEqual({ env: 'MOLLY_PORT' });
    expect(sources.host).toEqual({ file });
    expect(sources.db).toBe('default');
  });

  it('reads MOLLY_CONF when -c is not given, and -c over MOLLY_CONF', () => {
    const a = withFile('port = 1111\n');
    const b = withFile('port = 2222\n');
    expect(loadConfig({ env: { ...noFile, MOLLY_CONF: a } }).config.port).toBe(1111);
    expect(loadConfig({ file: b, env: { ...noFile, MOLLY_CONF: a } }).config.port).toBe(2222);
  });

  it('finds $XDG_CONFIG_HOME/mollysocket/config.toml', async () => {
    const xdg = tempDir();
    const { mkdirSync } = await import('node:fs');
    mkdirSync(join(xdg, 'mollysocket'));
    writeFileSync(join(xdg, 'mollysocket', 'config.toml'), 'port = 3333\n');
    expect(loadConfig({ env: { XDG_CONFIG_HOME: xdg } }).config.port).toBe(3333);
  });

  it('accepts list variables as JSON with or without spaces, or comma-separated', () => {
    const env = (v: string) => loadConfig({ env: { ...noFile, MOLLY_ALLOWED_ENDPOINTS: v } }).config.allowed_endpoints;
    expect(env('["*"]')).toEqual(['*']);
    expect(env('[ "https://a.example", "https://b.example" ]')).toEqual(['https://a.example', 'https://b.example']);
    expect(env('https://a.example,https://b.example')).toEqual(['https://a.example', 'https://b.example']);
  });

  it('parses booleans from the environment', () => {
    expect(loadConfig({ env: { ...noFile, MOLLY_WEBSERVER: 'false' } }).config.webserver).toBe(false);
    expect(loadConfig({ env: { ...noFile, MOLLY_WEBSERVER: 'true' } }).config.webserver).toBe(true);
  });

  it('names the key and the source of a wrong value', () => {
    expect(() => loadConfig({ env: { ...noFile, MOLLY_PORT: 'eighty' } })).toThrow(/"port" must be an integer.*MOLLY_PORT/);
    expect(() => loadConfig({ env: { ...noFile, MOLLY_PORT: '70000' } })).toThrow(ConfigError);
    const file = withFile('webserver = "yes please"\n');
    expect(() => loadConfig({ file, env: noFile })).toThrow(new RegExp(`"webserver" must be true or false.*${file}`));
    expect(() => loadConfig({ env: { ...noFile, MOLLY_SIGNAL_ENV: 'prod' } })).toThrow(/"signal_env" must be one of production, staging/);
    expect(() => loadConfig({ env: { ...noFile, MOLLY_VAPID_PRIVKEY: 'short' } })).toThrow(/"vapid_privkey" must be 43 characters/);
    expect(() => loadConfig({ env: { ...noFile, MOLLY_SIGNAL_URL: 'https://x' } })).toThrow(/"signal_url" must be a wss or ws URL/);
  });

  it('warns about unknown keys by name, suggesting the nearest known key, and goes on', () => {
    const file = withFile('prot = 8020\nzzzzzz = 1\n');
    const { warnings, config } = loadConfig({ file, env: { ...noFile, MOLLY_HSOT: 'x' } });
    expect(config.port).toBe(8020);
    expect(warnings).toEqual([
      `unknown config key "prot" in ${file} is ignored (did you mean "port"?)`,
      `unknown config key "zzzzzz" in ${file} is ignored`,
      'unknown environment variable MOLLY_HSOT is ignored (did you mean MOLLY_HOST?)',
    ]);
  });

  it('explains a missing config file, or broken TOML with its line and column', () => {
    expect(() => loadConfig({ file: '/nonexistent.toml', env: noFile })).toThrow(/\/nonexistent.toml \(from -c\) does not exist/);
    expect(() => loadConfig({ env: { ...noFile, MOLLY_CONF: '/nope.toml' } })).toThrow(/from MOLLY_CONF/);
    const file = withFile('host = "0.0.0.0"\nport = = 1\n');
    expect(() => loadConfig({ file, env: noFile })).toThrow(new RegExp(`^config file ${file} is not valid TOML at line 2, column 8: `));
  });

  it('stops on a signal_ca_file or vapid_key_file that cannot be read, naming the key', () => {
    expect(() => loadConfig({ env: { ...noFile, MOLLY_SIGNAL_CA_FILE: '/nonexistent/ca.pem' } })).toThrow(
      /config key "signal_ca_file" names a file that cannot be read \(ENOENT\).*MOLLY_SIGNAL_CA_FILE/,
    );
    expect(() => loadConfig({ env: { ...noFile, MOLLY_VAPID_KEY_FILE: '/nonexistent/k' } })).toThrow(ConfigError);
  });

  it('takes the supervisor keys, within their ranges', () => {
    const { config } = loadConfig({ env: { ...noFile, MOLLY_BACKOFF_MAX_SECONDS: '60', MOLLY_CONNECT_RATE: '20', MOLLY_CONNECT_CONCURRENCY: '4' } });
    expect(config).toMatchObject({ backoff_max_seconds: 60, connect_rate: 20, connect_concurrency: 4 });
    expect(loadConfig({ env: noFile }).config).toMatchObject({ backoff_max_seconds: 300, connect_rate: 100, connect_concurrency: 50 });
    expect(() => loadConfig({ env: { ...noFile, MOLLY_CONNECT_RATE: '0' } })).toThrow(/"connect_rate" must be an integer from 1/);
  });

  it('reads MOLLY_* values as MollySocket (figment) does: quoted strings, bare-word arrays, any case of the prefix', () => {
    const load = (env: Record<string, string>) => loadConfig({ env: { ...noFile, ...env } });
    // MollySocket's compose file writes MOLLY_DB="/data/mollysocket.db", the quotes inside the value.
    expect(load({ MOLLY_DB: '"/data/mollysocket.db"' }).config.db).toBe('/data/mollysocket.db');
    expect(load({ MOLLY_DB: ' /data/molly socket.db ' }).config.db).toBe('/data/molly socket.db');
    expect(load({ MOLLY_ALLOWED_UUIDS: '[*]' }).config.allowed_uuids).toEqual(['*']);
    expect(load({ MOLLY_ALLOWED_UUIDS: '"*"' }).config.allowed_uuids).toEqual(['*']);
    expect(load({ MOLLY_ALLOWED_ENDPOINTS: '[https://a.example,https://b.example:8443]' }).config.allowed_endpoints).toEqual([
      'https://a.example',
      'https://b.example:8443',
    ]);
    expect(load({ MOLLY_ALLOWED_ENDPOINTS: '["https://a.example", https://b.example]' }).config.allowed_endpoints).toEqual([
      'https://a.example',
      'https://b.example',
    ]);
    expect(load({ MOLLY_WEBSERVER: 'false', MOLLY_PORT: ' 8021 ', MOLLY_HOST: '"::"' }).config).toMatchObject({ webserver: false, port: 8021, host: '::' });
    expect(load({ MOLLY_WEBSERVER: '0' }).config.webserver).toBe(false);
    expect(() => load({ MOLLY_WEBSERVER: '"false"' })).toThrow(/"webserver" must be true or false/); // a string, as in figment
    const lower = load({ molly_port: '9001', Molly_Signal_Env: 'Staging' });
    expect(lower.config).toMatchObject({ port: 9001, signal_env: 'staging' });
    expect(lower.sources.port).toEqual({ env: 'molly_port' });
    expect(load({ MOLLY_VAPID_PRIVKEY: '' }).config.vapid_privkey).toBeUndefined(); // empty: unset
    expect(() => load({ MOLLY_PORT: '[8020]' })).toThrow(/"port" must be an integer/);
  });

  it('stops on a MOLLY_* value MollySocket would refuse, naming the variable and what is wrong, on one line', () => {
    const load = (env: Record<string, string>) => loadConfig({ env: { ...noFile, ...env } });
    const uuid = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
    const refused = (env: Record<string, string>): string => {
      try {
        load(env);
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as Error).message).not.toContain('\n');
        return (err as Error).message;
      }
      throw new Error(`accepted ${JSON.stringify(env)}`);
    };
    // Figment's parse fails, and MollySocket then finds text where it wants a list: it stops. Not a one-uuid "list".
    expect(refused({ MOLLY_ALLOWED_UUIDS: `['${uuid}']` })).toBe(
      `environment variable MOLLY_ALLOWED_UUIDS does not parse: '…' quotes exactly one character, and the one opened at ` +
        `character 2 goes on: write text as "…" (got "['${uuid}']")`,
    );
    expect(refused({ MOLLY_ALLOWED_ENDPOINTS: '[https://push.example' })).toMatch(
      /^environment variable MOLLY_ALLOWED_ENDPOINTS does not parse: expected "," or "]" at character 22, found the end/,
    );
    expect(refused({ MOLLY_DB: '"/data/mollysocket.db' })).toMatch(
      /^environment variable MOLLY_DB does not parse: a "…" string opened at character 1 is not closed/,
    );
    expect(refused({ MOLLY_PORT: "'8020'" })).toMatch(/^environment variable MOLLY_PORT does not parse: '…' quotes exactly one character/);
    // A secret's value is never repeated.
    const key = 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI';
    const secret = refused({ MOLLY_VAPID_PRIVKEY: `'${key}'` });
    expect(secret).toMatch(/^environment variable MOLLY_VAPID_PRIVKEY does not parse: .* \(got 45 characters\)$/);
    expect(secret).not.toContain(key.slice(0, 8));
    // Parsed, but of another type than the key takes.
    expect(refused({ MOLLY_ALLOWED_UUIDS: '{a = 1}' })).toMatch(/^config key "allowed_uuids" must be a list of strings.*MOLLY_ALLOWED_UUIDS/);
    expect(refused({ MOLLY_WEBSERVER: 'yes' })).toMatch(/^config key "webserver" must be true or false.*MOLLY_WEBSERVER/);
    expect(refused({ MOLLY_HOST: '[::]' })).toMatch(/^config key "host" must be a string \(got \["::"\] from MOLLY_HOST\)/);
    // A bare word stays its own text, separators and all, as figment takes it.
    expect(load({ MOLLY_DB: '/data/a,b.db', MOLLY_SIGNAL_URL: 'wss://[::1]:8443/v1/websocket/' }).config).toMatchObject({
      db: '/data/a,b.db',
      signal_url: 'wss://[::1]:8443/v1/websocket/',
    });
    expect(load({ MOLLY_ALLOWED_UUIDS: `['*']` }).config.allowed_uuids).toEqual(['*']); // one character: figment's char
  });

  it("accepts MollySocket's Production and Staging as well as lower case", () => {
    expect(loadConfig({ file: withFile('signal_env = "Production"\n'), env: noFile }).config.signal_env).toBe('production');
    expect(signalUrl(loadConfig({ env: { ...noFile, MOLLY_SIGNAL_ENV: 'Staging' } }).config)).toBe('wss://chat.staging.signal.org/v1/websocket/');
  });

  it('warns about an allowed_endpoints entry that is not a URL, which then allows nothing', () => {
    const { config, warnings } = loadConfig({ env: { ...noFile, MOLLY_ALLOWED_ENDPOINTS: '[push.example.org, ftp://x]' } });
    expect(config.allowed_endpoints).toEqual(['push.example.org', 'ftp://x']);
    expect(warnings).toEqual([
      'config key "allowed_endpoints" has an entry "push.example.org" (from MOLLY_ALLOWED_ENDPOINTS) that is not "*" or an http(s) URL: it never matches',
      'config key "allowed_endpoints" has an entry "ftp://x" (from MOLLY_ALLOWED_ENDPOINTS) that is not "*" or an http(s) URL: it never matches',
    ]);
  });

  it('lets signal_url override signal_env', () => {
    const { config } = loadConfig({ env: { ...noFile, MOLLY_SIGNAL_URL: 'wss://signal.example/v1/websocket/' } });
    expect(signalUrl(config)).toBe('wss://signal.example/v1/websocket/');
  });
});
