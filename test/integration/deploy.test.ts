import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseToml } from 'smol-toml';
import { CONFIG_KEYS, configExample, loadConfig } from '../../src/config.js';
import { packageRoot } from '../../src/paths.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { eventually, httpGet, memoryLogger, tempDir } from '../helpers/index.js';

const repo = (...p: string[]) => join(packageRoot, ...p);
const which = (cmd: string): string | undefined =>
  ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin'].map((d) => join(d, cmd)).find((p) => existsSync(p));

describe('config.example.toml', () => {
  it('is what `mollysocket config --example` prints: every key, its default, its variable', () => {
    const text = readFileSync(repo('config.example.toml'), 'utf8');
    expect(text).toBe(configExample());
    // Uncommented, the keys that have defaults form a valid file that changes nothing.
    const uncommented = text.split('\n').filter((l) => /^# [a-z_]+ = /.test(l)).map((l) => l.slice(2));
    expect(uncommented.map((l) => l.split(' ')[0])).toEqual(Object.keys(CONFIG_KEYS));
    const withDefaults = uncommented.filter((l) => CONFIG_KEYS[l.split(' ')[0] as keyof typeof CONFIG_KEYS].default !== undefined);
    const file = join(tempDir(), 'c.toml');
    writeFileSync(file, withDefaults.join('\n'));
    expect(parseToml(readFileSync(file, 'utf8'))).toBeTruthy();
    expect(loadConfig({ file, env: {} }).config).toEqual(loadConfig({ env: { XDG_CONFIG_HOME: '/nonexistent', HOME: '/nonexistent' } }).config);
  });
});

describe('the ops endpoints in the docs', () => {
  it('say that /health and /metrics are public by default and that metrics_port keeps them private', () => {
    const install = readFileSync(repo('INSTALL.md'), 'utf8').replace(/\s+/g, ' ');
    expect(install).toMatch(/`\/health` and `\/metrics`\*\* are public on the web port by default.*To keep them private, set `metrics_port`/);
    expect(configExample()).toMatch(/# New: serve \/health and \/metrics on this port only, to keep them private\. Unset: they are public on the web port/);
  });
});

const systemdAnalyze = which('systemd-analyze');

describe.skipIf(!systemdAnalyze)('systemd units', () => {
  /** Runs `systemd-analyze verify` in a scratch root holding the system's units, stub binaries and ours. */
  function verify(units: Record<string, string>): { code: number | null; output: string } {
    const root = tempDir('ms-systemd-');
    mkdirSync(join(root, 'etc/systemd/system'), { recursive: true });
    cpSync('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), { recursive: true });
    for (const bin of ['usr/local/bin/mollysocket', 'usr/bin/sh']) {
      mkdirSync(join(root, bin, '..'), { recursive: true });
      writeFileSync(join(root, bin), '#!/bin/sh\n', { mode: 0o755 });
    }
    for (const [name, text] of Object.entries(units)) writeFileSync(join(root, 'etc/systemd/system', name), text);
    const r = spawnSync(systemdAnalyze!, ['verify', `--root=${root}`, ...Object.keys(units).map((u) => `/etc/systemd/system/${u}`)], { encoding: 'utf8' });
    return { code: r.status, output: `${r.stdout}${r.stderr}`.trim() };
  }
  const unit = (name: string) => readFileSync(repo(name), 'utf8');

  it('mollysocket.service and mollysocket-vapid.service pass `systemd-analyze verify` without a warning', () => {
    expect(verify({ 'mollysocket.service': unit('mollysocket.service'), 'mollysocket-vapid.service': unit('mollysocket-vapid.service') })).toEqual({ code: 0, output: '' });
  });

  it('(the check itself catches a broken unit)', () => {
    const broken = unit('mollysocket.service').replace('ProtectSystem=strict', 'ProtectSystem=sometimes');
    expect(verify({ 'mollysocket.service': broken }).output).toMatch(/ProtectSystem|protect system/i);
  });

  it('sandbox the service and load the VAPID key as an encrypted credential', () => {
    const service = unit('mollysocket.service');
    for (const line of ['DynamicUser=true', 'ProtectSystem=strict', 'StateDirectory=mollysocket', 'NoNewPrivileges=true', 'LoadCredentialEncrypted=vapid_key:/etc/mollysocket/vapid.key', 'Environment=MOLLY_VAPID_KEY_FILE=%d/vapid_key']) {
      expect(service).toContain(`\n${line}\n`);
    }
    expect(unit('mollysocket-vapid.service')).toMatch(/mollysocket vapid gen \| systemd-creds encrypt --name=vapid_key/);
  });
});

const nginx = which('nginx');
if (!nginx && process.env.CI) throw new Error('the reverse-proxy test needs nginx: apt-get install nginx-light');
if (!nginx) console.warn('reverse-proxy test skipped: no nginx (apt-get install nginx-light)');

const freePort = (): Promise<number> =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

/** nginx running the sample from deploy/nginx in front of `upstream` (host:port); its URL. */
async function nginxInFront(upstream: string): Promise<{ url: string; stop: () => void }> {
  const dir = tempDir('ms-nginx-');
  const sample = readFileSync(repo('deploy/nginx/mollysocket.conf'), 'utf8').replaceAll('127.0.0.1:8020', upstream);
  writeFileSync(join(dir, 'mollysocket.conf'), sample);
  const port = await freePort();
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1; daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;
     events { worker_connections 64; }
     http {
       access_log off;
       client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
       uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
       server { listen 127.0.0.1:${port}; include ${dir}/mollysocket.conf; }
     }`,
  );
  const proxy = spawn(nginx!, ['-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  await eventually(async () => (await httpGet(`${url}/molly/`).catch(() => ({ status: 0 }))).status !== 0, 'nginx', 10_000, 50);
  return { url, stop: () => void proxy.kill('SIGQUIT') };
}

describe.skipIf(!nginx)('behind nginx on a sub-path, with the sample from deploy/nginx', () => {
  let server: RunningServer;
  let push: FakePushServer;
  let signal: FakeSignalServer;
  let proxy: { url: string; stop: () => void };
  let proxyUrl: string;

  beforeAll(async () => {
    push = await FakePushServer.start();
    signal = await FakeSignalServer.start({ tls: false });
    signal.addAccount({ uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 2, password: 'pw' }); // a new device is asked to Signal first
    const { config } = loadConfig({
      env: { XDG_CONFIG_HOME: '/nonexistent', MOLLY_PORT: '0', MOLLY_DB: join(tempDir(), 'm.db'), MOLLY_ALLOWED_ENDPOINTS: `["${push.origin}"]`, MOLLY_SIGNAL_URL: signal.url },
    });
    server = await startServer(config, memoryLogger().log);
    proxy = await nginxInFront(new URL(server.url!).host);
    proxyUrl = proxy.url;
  });

  afterAll(async () => {
    proxy?.stop();
    await server?.close();
    await push?.close();
    await signal?.close();
  });

  it('shows the public URL in the homepage link', async () => {
    const page = await httpGet(`${proxyUrl}/molly/`, { Host: 'example.org' });
    expect(page.status).toBe(200);
    const link = new URL(/<code id="link">([^<]+)<\/code>/.exec(page.body)![1]!.replaceAll('&amp;', '&'));
    expect(link.searchParams.get('url')).toBe('https://example.org/molly/');
    expect(link.searchParams.get('type')).toBe('webserver');
  });

  it('answers a registration through the proxy with ok', async () => {
    const res = await fetch(`${proxyUrl}/molly/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json; charset=utf-8' },
      body: JSON.stringify({ uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', device_id: 2, password: 'pw', endpoint: push.endpoint() }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ mollysocket: { version: expect.any(String), status: 'ok' } });
    expect(await server.store.list()).toHaveLength(1);
  });
});

describe.skipIf(!nginx)('the client address behind the nginx sample', () => {
  const registration = (url: string, push: FakePushServer, spoofed: string) =>
    fetch(`${url}/molly/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json; charset=utf-8', 'X-Forwarded-For': spoofed },
      body: JSON.stringify({ uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', device_id: 2, password: 'pw', endpoint: push.endpoint() }),
    }).then((r) => r.status);

  it('is set to the address nginx saw, whatever the client wrote', async () => {
    const seen: (string | string[] | undefined)[] = [];
    const upstream = createHttpServer((req, res) => {
      seen.push(req.headers['x-forwarded-for']);
      res.end('ok');
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const proxy = await nginxInFront(`127.0.0.1:${(upstream.address() as { port: number }).port}`);
    try {
      seen.length = 0;
      await httpGet(`${proxy.url}/molly/`, { 'X-Forwarded-For': '203.0.113.66' });
      expect(seen).toEqual(['127.0.0.1']);
    } finally {
      proxy.stop();
      upstream.close();
    }
  });

  it.each([
    ['trust_proxy = true: one bucket per phone, a spoofed header picks none', 'true', [200, 200, 200, 429]],
    ['without trust_proxy: clients behind the proxy are never limited', 'false', [200, 200, 200, 200]],
  ])('%s', async (_name, trust, expected) => {
    const push = await FakePushServer.start();
    const { config } = loadConfig({
      env: {
        XDG_CONFIG_HOME: '/nonexistent', MOLLY_PORT: '0', MOLLY_DB: join(tempDir(), 'm.db'), MOLLY_ALLOWED_ENDPOINTS: `["${push.origin}"]`,
        MOLLY_SIGNAL_URL: 'ws://127.0.0.1:1/', MOLLY_TRUST_PROXY: trust, MOLLY_REGISTRATION_RATE_LIMIT: '3',
      },
    });
    const server = await startServer(config, memoryLogger().log);
    const proxy = await nginxInFront(new URL(server.url!).host);
    try {
      const statuses = [];
      for (let i = 0; i < 4; i++) statuses.push(await registration(proxy.url, push, `198.51.100.${i}`));
      expect(statuses).toEqual(expected);
    } finally {
      proxy.stop();
      await server.close();
      await push.close();
    }
  });
});
