import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { eventually, TEST_UUIDS, TEST_VAPID, tempDir } from '../helpers/index.js';

/** What the log says through the bin: the lines that show the work at info, and those shown whatever the level. */
const procs: BinProcess[] = [];
const server = (args: string[], cwd: string, env: Record<string, string>): BinProcess => {
  const p = new BinProcess([...args, 'server'], { cwd, env: { MOLLY_PORT: '0', ...env } });
  procs.push(p);
  return p;
};
let signal: FakeSignalServer | undefined;

afterEach(async () => {
  for (const p of procs.splice(0)) if (p.child.exitCode === null && p.child.signalCode === null) await p.stop('SIGKILL');
  await signal?.close();
  signal = undefined;
});

describe('logs', () => {
  it('say that a first start generated the VAPID key whatever the level, and nothing else at the default level', async () => {
    const cwd = tempDir();
    const first = server([], cwd, { MOLLY_LOG: '' });
    await first.waitFor(/generated a VAPID key/);
    expect(await first.stop()).toBe(0);
    expect(first.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(
        new RegExp(`INFO: generated a VAPID key and kept it next to the database: back this file up with it \\{"file":"${join(cwd, 'vapid.key')}"\\}$`),
      ),
    ]);
    const again = server([], cwd, { MOLLY_LOG: '' });
    await eventually(async () => /^server: running/.test((await runBin(['status'], { cwd })).stdout), 'the server to run', 20_000, 100);
    expect(await again.stop()).toBe(0);
    expect(again.stderr).toBe('');
  }, 60_000);

  it('at -v: a start-up summary once every stored connection was tried, with how many connected and how long it took', async () => {
    signal = await FakeSignalServer.start({ tls: true });
    const accounts: Account[] = TEST_UUIDS.map((uuid, i) => ({ uuid, deviceId: 1, password: `password-${i}` }));
    for (const a of accounts) signal.addAccount(a);
    const cwd = tempDir();
    const store = SqliteStore.open(join(cwd, 'mollysocket.db'));
    for (const a of accounts) await store.put({ ...a, endpoint: 'https://push.example/up' }, 1_700_000_000);
    await store.put({ uuid: '0b6c2f4e-8d1a-4c3b-9e5f-000000000000', deviceId: 1, password: 'unknown', endpoint: 'https://push.example/up' }, 1_700_000_000);
    await store.close();
    const proc = server(['-v'], cwd, {
      MOLLY_LOG: '',
      MOLLY_LOG_FORMAT: 'json',
      MOLLY_VAPID_PRIVKEY: TEST_VAPID.priv,
      MOLLY_SIGNAL_URL: signal.url,
      MOLLY_SIGNAL_CA_FILE: testPki().caFile,
    });
    await proc.waitFor(/start-up: every stored connection has been tried/, 30_000);
    expect(await proc.stop()).toBe(0);
    const lines = proc.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l.msg === 'start-up: every stored connection has been tried')).toEqual(
      // The third account is unknown to Signal: 403, forbidden.
      expect.objectContaining({ level: 'info', stored: 3, connected: 2, reconnecting: 0, forbidden: 1, took_s: expect.any(Number) }),
    );
    // JSON lines name their level in words.
    for (const l of lines) expect(['info', 'warn', 'error']).toContain(l.level);
  }, 60_000);

  it('logs request lines at -vv (debug), as the README says, and not at -v', async () => {
    const lines = async (args: string[]): Promise<string> => {
      const proc = server(args, tempDir(), { MOLLY_LOG: '', MOLLY_VAPID_PRIVKEY: TEST_VAPID.priv });
      await fetch(`${await proc.url()}/discover`);
      expect(await proc.stop()).toBe(0);
      return proc.stderr;
    };
    expect(await lines(['-v'])).not.toMatch(/\/discover/);
    expect(await lines(['-vv'])).toMatch(/DEBUG: incoming request .*"url":"\/discover"/);
  }, 60_000);
});
