import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { logLevel } from '../../src/log.js';
import { eventually, httpGet, tempDir } from '../helpers/index.js';
import { linkIn } from '../helpers/web.js';

describe('the mollysocket bin', () => {
  it('lists its commands', async () => {
    const r = await runBin(['--help'], { cwd: tempDir() });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\s+server\s/m);
    expect(r.stdout).toMatch(/^\s+vapid\s/m);
    expect(r.stdout).toMatch(/-c, --config <file>/);
  });

  it('`vapid gen` prints a fresh 43-character key and nothing else on stdout', async () => {
    const cwd = tempDir();
    const a = await runBin(['vapid', 'gen'], { cwd });
    const b = await runBin(['vapid', 'generate'], { cwd });
    const c = await runBin(['vap', 'ge'], { cwd }); // unambiguous prefixes
    for (const r of [a, b, c]) {
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^[A-Za-z0-9_-]{43}\n$/);
    }
    expect(a.stdout).not.toBe(b.stdout);
  });

  it('exits 2 with one line naming the setting on a configuration error', async () => {
    const r = await runBin(['server'], { cwd: tempDir(), env: { MOLLY_PORT: 'http' } });
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^mollysocket: config key "port" must be an integer.*MOLLY_PORT/)]);
  });

  it('names a mistyped secret key and its source, never its value', async () => {
    const key = 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI';
    const cwd = tempDir();
    writeFileSync(join(cwd, 'conf.toml'), `vapid_privkey = "${key} "\n`); // a trailing space is enough
    const fromFile = await runBin(['-c', 'conf.toml', 'server'], { cwd });
    const fromEnv = await runBin(['server'], { cwd, env: { MOLLY_VAPID_PRIVKEY: `${key.slice(0, 42)}!` } });
    for (const [r, source] of [
      [fromFile, 'conf.toml'],
      [fromEnv, 'MOLLY_VAPID_PRIVKEY'],
    ] as const) {
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`config key "vapid_privkey" .*${source}`));
      expect(r.stderr).not.toContain(key.slice(0, 20));
    }
  });

  it('exits 2 on an unknown command', async () => {
    expect((await runBin(['serve-me'], { cwd: tempDir() })).code).toBe(2);
  });

  it('runs the server on embedded defaults, generating a VAPID key once and keeping it', async () => {
    const cwd = tempDir();
    const first = new BinProcess(['server'], { cwd, env: { MOLLY_PORT: '0' } });
    const url = await first.url();
    await first.waitFor(/generated a VAPID key/);
    expect(statSync(join(cwd, 'vapid.key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(cwd, 'mollysocket.db')).mode & 0o777).toBe(0o600);
    const key = readFileSync(join(cwd, 'vapid.key'), 'utf8');
    expect(first.stderr).not.toContain(key.trim()); // the private key is never logged

    expect(await (await fetch(`${url}/discover`)).json()).toEqual({ mollysocket: { version: expect.any(String) } });
    const molly = await fetch(`${url}/`, { headers: { 'User-Agent': 'Signal-Android/7.0' } });
    expect(await molly.json()).toEqual({ mollysocket: { version: expect.any(String) } });
    const page = (await httpGet(`${url}/`, { Host: 'molly.example' })).body;
    const params = linkIn(page).searchParams;
    expect(params.get('type')).toBe('webserver');
    expect(params.get('url')).toBe('https://molly.example/');
    expect(page).toContain('<svg');
    expect(await first.stop('SIGTERM')).toBe(0);

    const second = new BinProcess(['server'], { cwd, env: { MOLLY_PORT: '0' } });
    const url2 = await second.url();
    const page2 = (await httpGet(`${url2}/`, { Host: 'molly.example' })).body;
    expect(linkIn(page2).searchParams.get('vapid')).toBe(params.get('vapid'));
    expect(second.stderr).not.toMatch(/generated a VAPID key/);
    expect(readFileSync(join(cwd, 'vapid.key'), 'utf8')).toBe(key);
    expect(await second.stop('SIGINT')).toBe(0);
  });

  it('takes -c FILE and -vv before the command', async () => {
    const cwd = tempDir();
    const conf = join(cwd, 'conf.toml');
    writeFileSync(conf, `port = 0\ndb = "${join(cwd, 'custom.db')}"\nvapid_privkey = "DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI"\n`);
    const proc = new BinProcess(['-c', conf, '-vv', 'server'], { cwd, env: { MOLLY_LOG: '' } });
    await proc.url();
    const configLine = await proc.waitFor(/^\S+ DEBUG: configuration .*$/m); // debug lines are on
    expect(configLine[0]).toContain('custom.db');
    expect(configLine[0]).toContain('"vapid_privkey":"(redacted)"');
    expect(proc.stderr).not.toContain('DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI');
    expect(statSync(join(cwd, 'custom.db')).isFile()).toBe(true);
    expect(await proc.stop()).toBe(0);
  });

  it('closes every Signal socket with 1000 on SIGTERM, exits 0 within 5 s, and resumes the connections on restart', async () => {
    const signal = await FakeSignalServer.start({ tls: true });
    const push = await FakePushServer.start();
    try {
      const account = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 3, password: 'secret+/pw==' };
      signal.addAccount(account);
      const cwd = tempDir();
      const env = {
        MOLLY_PORT: '0',
        MOLLY_SIGNAL_URL: signal.url,
        MOLLY_SIGNAL_CA_FILE: testPki().caFile,
        MOLLY_ALLOWED_ENDPOINTS: `["${push.origin}"]`,
      };
      const first = new BinProcess(['server'], { cwd, env });
      const res = await fetch(`${await first.url()}/`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ uuid: account.uuid, device_id: 3, password: account.password, endpoint: push.endpoint() }),
      });
      expect(((await res.json()) as { mollysocket: { status: string } }).mollysocket.status).toBe('ok');
      await signal.until(() => signal.open(account.uuid, 3).length === 1, 'a session');

      expect(await first.stop('SIGTERM')).toBe(0);
      // The registration's question to Signal closed its socket with 1000 too: the connection's is the second.
      await signal.until(() => signal.events.filter((e) => e === `close ${account.uuid}.3 1000`).length === 2, 'a close with 1000');
      expect(first.stderr).not.toContain(account.password);

      const second = new BinProcess(['server'], { cwd, env });
      await signal.until(() => signal.sessions.length === 3 && signal.open(account.uuid, 3).length === 1, 'the resumed session');
      expect(await second.stop('SIGINT')).toBe(0);
    } finally {
      await signal.close();
      await push.close();
    }
  });

  it('with webserver = false opens no listener and logs the air-gapped link and its QR code', async () => {
    const cwd = tempDir();
    const proc = new BinProcess(['server'], { cwd, env: { MOLLY_WEBSERVER: 'false', MOLLY_PORT: '0' } });
    const line = await proc.waitFor(/[^\n]*the web server is off[^\n]*/);
    expect(line[0]).toMatch(/"link":"mollysocket:\/\/link\?vapid=[A-Za-z0-9_-]{87}&type=airgapped"/);
    await proc.waitFor(/type=airgapped\n\n/);
    const qrLines = proc.stderr.split('\n').filter((l) => /^[ █▀▄]+$/.test(l) && /[█▀▄]/.test(l));
    expect(qrLines.length).toBeGreaterThan(20); // drawn raw, line by line, so it can be scanned from a terminal
    expect(proc.stderr).not.toMatch(/web server listening/);
    expect(await proc.stop()).toBe(0);
  });

  it('logs text lines by default, one per event, and JSON with log_format = "json"', async () => {
    const text = new BinProcess(['server'], { cwd: tempDir(), env: { MOLLY_PORT: '0' } });
    await text.url();
    expect(await text.stop()).toBe(0);
    const lines = text.stderr.trim().split('\n');
    for (const line of lines) expect(line).toMatch(/^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] (INFO|WARN): [^{]+( \{.*\})?$/);
    expect(lines.filter((l) => /listening/i.test(l))).toEqual([
      expect.stringMatching(/INFO: web server listening \{"url":"http:\/\/127\.0\.0\.1:\d+","version":"[^"]+"\}$/),
    ]);
    expect(text.stderr).not.toMatch(/\x1b\[/); // no colours when not a terminal

    const cwd = tempDir();
    writeFileSync(join(cwd, 'mollysocket.toml'), 'log_format = "json"\nport = 0\n');
    const json = new BinProcess(['server'], { cwd });
    await json.url();
    expect(await json.stop()).toBe(0);
    const objects = json.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { level: string; msg: string; time: number });
    expect(objects.find((o) => o.msg === 'web server listening')).toMatchObject({ level: 'info', time: expect.any(Number) });
    expect((await runBin(['config'], { cwd, env: { MOLLY_LOG_FORMAT: 'text' } })).stdout).toMatch(/^log_format = "text" {2}# MOLLY_LOG_FORMAT$/m);
  });

  it('logs errors only by default, as MollySocket; -v info, -vv debug, -vvv trace', async () => {
    const levels = async (args: string[]): Promise<string[]> => {
      const cwd = tempDir();
      const proc = new BinProcess([...args, 'server'], { cwd, env: { MOLLY_LOG: '', MOLLY_PORT: '0' } });
      await eventually(async () => /^server: running/.test((await runBin(['status'], { cwd })).stdout), 'the server to run', 10_000, 100);
      expect(await proc.stop()).toBe(0);
      return [...new Set([...proc.stderr.matchAll(/^\S+ ([A-Z]+):/gm)].map((m) => m[1] as string))].sort();
    };
    expect(await levels([])).toEqual(['INFO']); // the one line a first start shows whatever the level: test/integration/logs.test.ts
    expect(await levels(['-v'])).toEqual(['INFO']);
    expect(await levels(['-vv'])).toEqual(['DEBUG', 'INFO']);
    expect(logLevel(3, {})).toBe('trace'); // nothing logs at trace by default, so -vvv is checked here
    expect(logLevel(1, { RUST_LOG: 'debug' })).toBe('debug'); // -v does not hide what RUST_LOG asks for, as MollySocket
    expect(logLevel(0, { RUST_LOG: 'mollysocket=warn,info' })).toBe('warn');
  }, 60_000);
});
