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
    expect(() => loadConfig({ env: { ...noFile, MOLLY_ALLOWED_ENDPOINTS: '["ftp://x"]' } })).toThrow(/"allowed_endpoints"/);
    expect(() => loadConfig({ env: { ...noFile, MOLLY_VAPID_PRIVKEY: 'short' } })).toThrow(/"vapid_privkey" must be 43 characters/);
    expect(() => loadConfig({ env: { ...noFile, MOLLY_SIGNAL_URL: 'https://x' } })).toThrow(/"signal_url" must be a wss or ws URL/);
  });

  it('warns about unknown keys by name and goes on', () => {
    const file = withFile('prot = 8020\n');
    const { warnings, config } = loadConfig({ file, env: { ...noFile, MOLLY_HSOT: 'x' } });
    expect(config.port).toBe(8020);
    expect(warnings.join('\n')).toMatch(/unknown config key "prot"/);
    expect(warnings.join('\n')).toMatch(/MOLLY_HSOT/);
  });

  it('explains a missing config file or broken TOML', () => {
    expect(() => loadConfig({ file: '/nonexistent.toml', env: noFile })).toThrow(/\/nonexistent.toml \(from -c\) does not exist/);
    expect(() => loadConfig({ env: { ...noFile, MOLLY_CONF: '/nope.toml' } })).toThrow(/from MOLLY_CONF/);
    expect(() => loadConfig({ file: withFile('port = = 1'), env: noFile })).toThrow(/is not valid TOML/);
  });

  it('takes the supervisor keys, within their ranges', () => {
    const { config } = loadConfig({ env: { ...noFile, MOLLY_BACKOFF_MAX_SECONDS: '60', MOLLY_CONNECT_RATE: '20', MOLLY_CONNECT_CONCURRENCY: '4' } });
    expect(config).toMatchObject({ backoff_max_seconds: 60, connect_rate: 20, connect_concurrency: 4 });
    expect(loadConfig({ env: noFile }).config).toMatchObject({ backoff_max_seconds: 300, connect_rate: 100, connect_concurrency: 50 });
    expect(() => loadConfig({ env: { ...noFile, MOLLY_CONNECT_RATE: '0' } })).toThrow(/"connect_rate" must be an integer from 1/);
  });

  it('lets signal_url override signal_env', () => {
    const { config } = loadConfig({ env: { ...noFile, MOLLY_SIGNAL_URL: 'wss://signal.example/v1/websocket/' } });
    expect(signalUrl(config)).toBe('wss://signal.example/v1/websocket/');
  });
});
