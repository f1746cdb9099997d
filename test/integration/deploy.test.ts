import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseToml } from 'smol-toml';
import { CONFIG_KEYS, configExample, loadConfig } from '../../src/config.js';
import { packageRoot } from '../../src/paths.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { FakePushServer } from '../fakes/push-server.js';
import { BIN } from '../helpers/bin.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { eventually, httpGet, memoryLogger, tempDir } from '../helpers/index.js';
import { execWords, unitEntries, unitEnvironment, unitValues } from '../helpers/systemd.js';
import { linkIn } from '../helpers/web.js';

const repo = (...p: string[]) => join(packageRoot, ...p);
const which = (cmd: string): string | undefined =>
  ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin'].map((d) => join(d, cmd)).find((p) => existsSync(p));

describe('config.example.toml', () => {
  it('is what `mollysocket config --example` prints: every key, its default, its variable', () => {
    const text = readFileSync(repo('config.example.toml'), 'utf8');
    expect(text).toBe(configExample());
    // Uncommented, the keys that have defaults form a valid file that changes nothing.
    const uncommented = text
      .split('\n')
      .filter((l) => /^# [a-z_]+ = /.test(l))
      .map((l) => l.slice(2));
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
    expect(verify({ 'mollysocket.service': unit('mollysocket.service'), 'mollysocket-vapid.service': unit('mollysocket-vapid.service') })).toEqual({
      code: 0,
      output: '',
    });
  });

  it('(the check itself catches a broken unit)', () => {
    const broken = unit('mollysocket.service').replace('ProtectSystem=strict', 'ProtectSystem=sometimes');
    expect(verify({ 'mollysocket.service': broken }).output).toMatch(/ProtectSystem|protect system/i);
  });
});

describe("systemd units on MollySocket's /etc/mollysocket", () => {
  it("mollysocket.service reads MollySocket's conf.toml and its credential vapid.key, sandboxed", () => {
    const service = unitEntries('mollysocket.service');
    const env = unitEnvironment(service);
    expect(env.MOLLY_CONF).toBe('/etc/mollysocket/conf.toml');
    // systemd checks the name against the one sealed in the file, which MollySocket's unit seals as vapid.key.
    expect(unitValues(service, 'LoadCredentialEncrypted')).toEqual(['vapid.key:/etc/mollysocket/vapid.key']);
    expect(env.MOLLY_VAPID_KEY_FILE).toBe('%d/vapid.key');
    expect(env.MOLLY_DB).toBeUndefined(); // conf.toml's db, as MollySocket's vapid unit wrote it, must win
    expect(unitValues(service, 'ExecStart')).toEqual(['mollysocket server']);
    const sandbox: [string, string][] = [
      ['DynamicUser', 'true'],
      ['ProtectSystem', 'strict'],
      ['StateDirectory', 'mollysocket'],
      ['NoNewPrivileges', 'true'],
      ['CapabilityBoundingSet', ''],
    ];
    for (const [key, value] of sandbox) {
      expect(unitValues(service, key), key).toEqual([value]);
    }
  });

  it("mollysocket-vapid.service leaves /etc/mollysocket as MollySocket's does, and keeps what exists", async () => {
    const root = tempDir('ms-vapid-unit-');
    const etc = join(root, 'etc');
    const stubs = join(root, 'bin');
    mkdirSync(etc);
    mkdirSync(stubs);
    // systemd-creds stands in as `cat`, recording its arguments; mollysocket is this program.
    writeFileSync(join(stubs, 'systemd-creds'), `#!/bin/sh\necho "$@" > "${root}/creds-args"\ncat > "$4"\n`, { mode: 0o755 });
    writeFileSync(join(stubs, 'mollysocket'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`, { mode: 0o755 });
    const vapidUnit = unitEntries('mollysocket-vapid.service');
    const run = () => {
      for (const line of unitValues(vapidUnit, 'ExecStart')) {
        const [cmd, ...args] = execWords(line);
        const r = spawnSync(cmd!, args, { env: { PATH: `${stubs}:${process.env.PATH}`, CONFIGURATION_DIRECTORY: etc }, encoding: 'utf8' });
        expect(r.status, `${line}: ${r.stderr}`).toBe(0);
      }
    };
    run();
    expect(readFileSync(join(etc, 'conf.toml'), 'utf8')).toBe("db = '/var/lib/mollysocket/ms.db'\n"); // MollySocket's line
    expect(loadConfig({ file: join(etc, 'conf.toml'), env: {} }).config.db).toBe('/var/lib/mollysocket/ms.db');
    expect(readFileSync(join(root, 'creds-args'), 'utf8')).toBe(`encrypt --name=vapid.key - ${etc}/vapid.key\n`);
    const key = readFileSync(join(etc, 'vapid.key'), 'utf8');
    expect(key).toMatch(/^[A-Za-z0-9_-]{43}\n$/);
    writeFileSync(join(etc, 'conf.toml'), "db = '/srv/ms.db'\n");
    run();
    expect(readFileSync(join(etc, 'conf.toml'), 'utf8')).toBe("db = '/srv/ms.db'\n");
    expect(readFileSync(join(etc, 'vapid.key'), 'utf8')).toBe(key);
    expect(unitValues(vapidUnit, 'ConfigurationDirectoryMode')).toEqual([]); // 0755: the service's user reads conf.toml
  }, 60_000);
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
      env: {
        XDG_CONFIG_HOME: '/nonexistent',
        MOLLY_PORT: '0',
        MOLLY_DB: join(tempDir(), 'm.db'),
        MOLLY_ALLOWED_ENDPOINTS: `["${push.origin}"]`,
        MOLLY_SIGNAL_URL: signal.url,
      },
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
    const link = linkIn(page.body);
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
        XDG_CONFIG_HOME: '/nonexistent',
        MOLLY_PORT: '0',
        MOLLY_DB: join(tempDir(), 'm.db'),
        MOLLY_ALLOWED_ENDPOINTS: `["${push.origin}"]`,
        MOLLY_SIGNAL_URL: 'ws://127.0.0.1:1/',
        MOLLY_TRUST_PROXY: trust,
        MOLLY_REGISTRATION_RATE_LIMIT: '3',
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

const caddy = which('caddy');
if (!caddy && process.env.CI) throw new Error('the Caddy test needs caddy: apt-get install caddy');
if (!caddy) console.warn('Caddy test skipped: no caddy (apt-get install caddy)');

interface HttpsAnswer {
  status: number;
  body: string;
}

/**
 * Caddy running the sample from deploy/caddy as users copy it (h2c to the server), each site on a loopback port
 * with a certificate of Caddy's own local CA; its home, data and config in a temp dir, no admin endpoint.
 */
async function caddyInFront(
  upstream: string,
): Promise<{ ask: (site: string, path: string, init?: { method?: string; body?: string }) => Promise<HttpsAnswer>; port: number; stop: () => Promise<void> }> {
  const dir = tempDir('ms-caddy-');
  const port = await freePort();
  const site = (name: string) => `https://${name}:${port} {\n\ttls internal\n\tbind 127.0.0.1`;
  const sample = readFileSync(repo('deploy/caddy/Caddyfile'), 'utf8')
    .replaceAll('127.0.0.1:8020', upstream)
    .replace(/^molly\.example\.org \{/m, site('molly.example.org'))
    .replace(/^example\.org \{/m, site('example.org'));
  expect(sample).toContain(`reverse_proxy h2c://${upstream}`);
  const global = `{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n\tstorage file_system ${dir}/data\n}\n`;
  writeFileSync(join(dir, 'Caddyfile'), global + sample);
  const env = { PATH: process.env.PATH, HOME: dir, XDG_DATA_HOME: join(dir, 'xdg-data'), XDG_CONFIG_HOME: join(dir, 'xdg-config') };
  const proxy = spawn(caddy!, ['run', '--config', join(dir, 'Caddyfile'), '--adapter', 'caddyfile'], { cwd: dir, env, stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => proxy.on('exit', () => resolve()));
  const root = join(dir, 'data/pki/authorities/local/root.crt');
  const ask = (name: string, path: string, init: { method?: string; body?: string } = {}): Promise<HttpsAnswer> =>
    new Promise((resolve, reject) => {
      const req = httpsRequest(
        {
          host: '127.0.0.1',
          port,
          path,
          method: init.method ?? 'GET',
          servername: name,
          ca: readFileSync(root),
          agent: false,
          headers: { Host: `${name}:${port}`, ...(init.body !== undefined && { 'Content-Type': 'application/json' }) },
        },
        (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject).end(init.body);
    });
  await eventually(
    async () => existsSync(root) && (await ask('molly.example.org', '/discover').catch(() => ({ status: 0 }))).status !== 0,
    'caddy',
    15_000,
    50,
  );
  return {
    ask,
    port,
    stop: async () => {
      proxy.kill('SIGTERM');
      await exited;
    },
  };
}

describe.skipIf(!caddy)("behind Caddy speaking h2c, with the sample from deploy/caddy (MollySocket's own)", () => {
  let server: RunningServer;
  let push: FakePushServer;
  let signal: FakeSignalServer;
  let proxy: Awaited<ReturnType<typeof caddyInFront>>;

  beforeAll(async () => {
    push = await FakePushServer.start();
    signal = await FakeSignalServer.start({ tls: false });
    // A new device is asked to Signal first.
    for (const uuid of ['0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f', '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e'])
      signal.addAccount({ uuid, deviceId: 2, password: 'pw' });
    const { config } = loadConfig({
      env: {
        XDG_CONFIG_HOME: '/nonexistent',
        MOLLY_PORT: '0',
        MOLLY_DB: join(tempDir(), 'm.db'),
        MOLLY_ALLOWED_ENDPOINTS: `["${push.origin}"]`,
        MOLLY_SIGNAL_URL: signal.url,
      },
    });
    server = await startServer(config, memoryLogger().log);
    proxy = await caddyInFront(new URL(server.url!).host);
  }, 30_000);

  afterAll(async () => {
    await proxy?.stop();
    await server?.close();
    await push?.close();
    await signal?.close();
  });

  it.each([
    ['at the root of its own name', 'molly.example.org', '/'],
    ['on a sub-path (X-Original-URL)', 'example.org', '/molly/'],
  ])('%s: discovery, the homepage link and a registration work', async (_name, site, path) => {
    const discover = await proxy.ask(site, `${path}discover`);
    expect(discover.status).toBe(200);
    expect(JSON.parse(discover.body)).toEqual({ mollysocket: { version: expect.any(String) } });
    const page = await proxy.ask(site, path);
    expect(page.status).toBe(200);
    expect(linkIn(page.body).searchParams.get('url')).toBe(`https://${site}:${proxy.port}${path}`);
    const uuid = site === 'example.org' ? '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f' : '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
    const registration = await proxy.ask(site, path, {
      method: 'POST',
      body: JSON.stringify({ uuid, device_id: 2, password: 'pw', endpoint: push.endpoint() }),
    });
    expect(registration.status).toBe(200);
    expect(JSON.parse(registration.body)).toEqual({ mollysocket: { version: expect.any(String), status: 'ok' } });
    expect((await server.store.list()).map((c) => c.uuid)).toContain(uuid);
  });

  it('answers a burst of requests over more streams than one session carries', async () => {
    const answers = await Promise.all(Array.from({ length: 100 }, () => proxy.ask('molly.example.org', '/discover')));
    expect(answers.map((a) => a.status)).toEqual(Array(100).fill(200));
  });
});
