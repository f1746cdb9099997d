import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generatePrivateKey } from '../../src/push/vapid.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { eventually, tempDir } from '../helpers/index.js';
import { startPostgres, type PrivatePostgres } from '../helpers/private-postgres.mjs';
import { freshDatabase, postgresMissing, signalServer } from '../helpers/postgres.js';

/**
 * Several instances (the built bin, as processes) on one PostgreSQL against the fake Signal server, which tells them
 * apart by the port each connects to. Real time throughout: PostgreSQL's clock decides the leases.
 */
const LEASE_S = 2;
const LEASE_MS = LEASE_S * 1000;
const DEVICES = 60;

const accounts: Account[] = Array.from({ length: DEVICES }, (_, i) => ({
  uuid: `${String(i).padStart(8, '0')}-0000-4000-8000-000000000000`, // told apart in logs, which show 8 characters
  deviceId: 1 + (i % 3),
  password: `pw-${i}`,
}));
const name = (a: Pick<Account, 'uuid' | 'deviceId'>) => `${a.uuid}.${a.deviceId}`;

describe.skipIf(postgresMissing !== undefined)('several instances on PostgreSQL', () => {
  let pg: PrivatePostgres;
  let db: string;
  let signal: FakeSignalServer;
  let push: FakePushServer;
  const instances = new Map<string, BinProcess>();
  const cwd = tempDir();

  const env = (tag: string, url: string): Record<string, string> => ({
    MOLLY_DB: db,
    MOLLY_PORT: '0',
    MOLLY_SIGNAL_URL: url,
    MOLLY_SIGNAL_CA_FILE: testPki().caFile,
    MOLLY_ALLOWED_ENDPOINTS: JSON.stringify([push.origin]),
    MOLLY_LEASE_SECONDS: String(LEASE_S),
    MOLLY_INSTANCE_NAME: tag,
  });

  async function start(tag: string): Promise<BinProcess> {
    const url = await signal.listen(tag);
    const p = new BinProcess(['-v', 'server'], { cwd, env: env(tag, url) });
    instances.set(tag, p);
    await p.waitFor(/joined the cluster/, 30_000);
    return p;
  }

  /** `mollysocket_lease_devices_total{event}` of an instance. */
  async function leaseMetric(p: BinProcess, event: string): Promise<number> {
    const text = await (await fetch(`${await p.url()}/metrics`)).text();
    return Number(new RegExp(`^mollysocket_lease_devices_total\\{event="${event}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  }

  async function health(p: BinProcess): Promise<{ instance: string; owned: number; live_instances: number; connections: { connected: number } }> {
    return (await fetch(`${await p.url()}/health`)).json() as never;
  }

  /**
   * Settled: every device has exactly one socket, and each instance holds the sockets of exactly the devices it owns
   * (no hand-over under way).
   */
  async function settled(what: string, timeoutMs = 15_000): Promise<void> {
    await eventually(
      async () => {
        if (!accountsNow().every((a) => signal.open(a.uuid, a.deviceId).length === 1)) return false;
        const perTag = signal.openPerTag();
        for (const [tag, p] of instances) if ((await health(p)).owned !== (perTag.get(tag) ?? 0)) return false;
        return true;
      },
      what,
      timeoutMs,
      100,
    );
  }
  const fightLog = () => signal.kicks.map((k) => `${k.device.slice(-14)} ${k.from}->${k.to} ${Math.round(k.at)}`).join('\n');
  const extra: Account[] = [];
  const accountsNow = () => [...accounts, ...extra];

  beforeAll(async () => {
    pg = (await startPostgres())!; // its own server: one test freezes it
    db = await freshDatabase(pg.url);
    signal = await FakeSignalServer.start({ tls: true });
    push = await FakePushServer.start();
    const store = await PostgresStore.open(db);
    for (const a of accounts) {
      signal.addAccount(a);
      await store.put({ ...a, endpoint: push.endpoint(name(a)) }, 1);
    }
    await store.close();
  });

  afterAll(async () => {
    await Promise.all([...instances.values()].map((p) => (p.child.exitCode === null ? p.stop('SIGKILL') : undefined)));
    await signal?.close();
    await push?.close();
    pg?.stop();
  });

  it('three instances share the devices fairly, one socket each, and agree on one VAPID key', async () => {
    await Promise.all(['a', 'b', 'c'].map(start));
    await settled('every device connected once');
    const perTag = signal.openPerTag();
    expect([...perTag.keys()].sort()).toEqual(['a', 'b', 'c']);
    for (const n of perTag.values()) expect(n).toBeGreaterThanOrEqual(DEVICES / 3 / 2); // fair: none below half the mean
    for (const [tag, p] of instances) {
      const h = await health(p);
      expect(h).toMatchObject({ live_instances: 3, owned: perTag.get(tag), connections: { connected: perTag.get(tag) } });
    }
    expect(signal.fights, fightLog()).toBe(0);
    const ids = await Promise.all([...instances.values()].map(async (p) => (await health(p)).instance));
    expect(new Set(ids).size).toBe(3);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f-]{36}$/);
    // One key for all, generated by the first and kept in the database; an instance configured with another refuses to start.
    const keys = await Promise.all([...instances.values()].map(async (p) => (await fetch(`${await p.url()}/`)).text()));
    const pub = (await runBin(['vapid', 'pub'], { cwd, env: { MOLLY_DB: db } })).stdout.trim();
    for (const page of keys) expect(page).toContain(pub);
    const stranger = await runBin(['server'], { cwd, env: { ...env('x', signal.url), MOLLY_VAPID_PRIVKEY: generatePrivateKey() } });
    expect(stranger.code).toBe(2);
    expect(stranger.stderr.trim()).toMatch(/^mollysocket: the configured VAPID key \(vapid_privkey\) is not the one the other instances on this database use/);
  }, 60_000); // three processes starting at once, on a busy machine

  it('applies CLI changes on any instance at once: added devices connect, removed ones close', async () => {
    const added: Account = { uuid: 'aaaaaaaa-0000-4000-8000-000000000000', deviceId: 1, password: 'pw-added' };
    signal.addAccount(added);
    extra.push(added);
    const add = await runBin(['connection', 'add', added.uuid, '1', added.password, push.endpoint(name(added))], { cwd, env: env('cli', signal.url) });
    expect(add.code).toBe(0);
    // Within half the 30 s re-read: the notification brought it, however slow the machine.
    await signal.until(() => signal.open(added.uuid, 1).length === 1, 'the added device connected', 15_000);
    // status lists the instances and who owns what; states are published with the heartbeat, every 5 s.
    let status = '';
    await eventually(
      async () =>
        /connected/.test((status = (await runBin(['status'], { cwd, env: { MOLLY_DB: db } })).stdout).split('\n').find((l) => l.startsWith(added.uuid)) ?? ''),
      'status shows it connected',
      8_000,
      500,
    );
    expect(status).toMatch(/instances: 3 live/);
    expect(status).toMatch(/^NAME\s+ID\s+PID\s+VERSION\s+STATE\s+LEASE LEFT\s+DEVICES$/m);
    const owner = [...signal.open(added.uuid, 1)][0]!.tag;
    expect(status).toMatch(new RegExp(`^${added.uuid}\\s+1\\s+connected\\s+socket open\\s+\\S+ \\S+\\s+${owner}$`, 'm'));

    expect((await runBin(['connection', 'remove', added.uuid], { cwd, env: { MOLLY_DB: db } })).code).toBe(0);
    await signal.until(() => signal.open(added.uuid, 1).length === 0, 'the removed device closed', 15_000);
    extra.pop();
    signal.removeAccount(added);
  });

  it('a registration on any instance reaches the owner at once: its next push goes to the new endpoint', async () => {
    // A device of b or c: a is killed next, and that test knows each victim by its endpoint.
    const device = accounts.find((a) => ['b', 'c'].includes(signal.open(a.uuid, a.deviceId)[0]!.tag))!;
    const owner = signal.open(device.uuid, device.deviceId)[0]!.tag;
    const other = [...instances.keys()].find((tag) => tag !== owner)!;
    const endpoint = push.endpoint('moved-endpoint');
    const sessionsOf = () => signal.sessions.filter((x) => x.account.uuid === device.uuid && x.account.deviceId === device.deviceId);
    const earlier = sessionsOf().length;
    const res = await fetch(`${await instances.get(other)!.url()}/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ uuid: device.uuid, device_id: device.deviceId, password: device.password, endpoint }),
    });
    expect(((await res.json()) as { mollysocket: { status: string } }).mollysocket.status).toBe('ok');
    // The owner replaces its socket (new settings), whichever instance answered.
    await signal.until(() => sessionsOf().length > earlier && signal.open(device.uuid, device.deviceId).length === 1, 'the owner applied it', 2_000);
    const session = signal.open(device.uuid, device.deviceId)[0]!;
    expect(session.tag).toBe(owner); // still the owner's
    const before = push.requests.length;
    await signal.sendEnvelope(session);
    await push.until(
      () => push.requests.slice(before).some((r) => r.path === '/up/moved-endpoint' && r.body === '{"urgent":true}'),
      'the push to the new endpoint',
      3_000,
    );
  });

  it("after kill -9, the dead instance's devices are owned and connected by the others within two leases, with one wake-up push each", async () => {
    const victim = instances.get('a')!;
    const victims = signal.sessions.filter((s) => s.tag === 'a' && s.ws.readyState === s.ws.OPEN).map((s) => name(s.account));
    expect(victims.length).toBeGreaterThan(0);
    signal.resetGaps();
    const pushesBefore = push.requests.length;
    const healthOf = (name: string) => runBin(['health'], { cwd, env: { MOLLY_DB: db, MOLLY_INSTANCE_NAME: name } });
    expect((await healthOf('a')).code).toBe(0);
    await victim.stop('SIGKILL'); // the sockets die with the process
    instances.delete('a');
    await settled('every device connected again', 4 * LEASE_MS);
    const gap = signal.longestGap();
    expect(gap).toBeLessThan(2 * LEASE_MS + 1_000); // two leases, and a little for the connect itself
    expect(signal.fights, fightLog()).toBe(0);
    expect(new Set(signal.openPerTag().keys())).toEqual(new Set(['b', 'c']));
    await push.until(() => push.requests.length - pushesBefore >= victims.length, 'the wake-up pushes');
    const woken = push.requests.slice(pushesBefore).map((r) => decodeURIComponent(r.path.replace('/up/', '')));
    expect(woken.sort()).toEqual(victims.sort()); // one each, and only those
    const claimed = await Promise.all(['b', 'c'].map(async (tag) => leaseMetric(instances.get(tag)!, 'claimed')));
    expect(claimed.reduce((a, b) => a + b)).toBeGreaterThanOrEqual(victims.length); // the victim's devices, at least
    // A container's HEALTHCHECK (`mollysocket health`) looks at its own instance, by name.
    const dead = await healthOf('a');
    expect([dead.code, dead.stderr.trim()]).toEqual([1, 'mollysocket: unhealthy: no server is running on this database']); // reaped
    expect((await healthOf('b')).code).toBe(0);
  });

  it('a joining instance takes its share make-before-break: no device without a socket', async () => {
    signal.resetGaps();
    const pushesBefore = push.requests.length;
    await start('d');
    await eventually(
      async () => (await health(instances.get('d')!)).connections.connected > 0 && signal.openPerTag().get('d') === (await health(instances.get('d')!)).owned,
      'd took its share',
      10_000,
      100,
    );
    await settled('one socket each');
    expect(signal.longestGap()).toBeLessThan(500);
    expect(signal.fights, fightLog()).toBe(0);
    expect(signal.openPerTag().get('d')).toBeGreaterThanOrEqual(DEVICES / 3 / 2);
    expect(push.requests.length).toBe(pushesBefore); // the expected 4409s send no delivery checks
    const handed = await Promise.all(['b', 'c'].map(async (tag) => leaseMetric(instances.get(tag)!, 'handed_over')));
    expect(handed.reduce((a, b) => a + b)).toBeGreaterThanOrEqual(signal.openPerTag().get('d')!);
  });

  it('SIGTERM hands every device over to the others and exits 0, with no device left without a socket', async () => {
    signal.resetGaps();
    const pushesBefore = push.requests.length;
    const leaving = instances.get('b')!;
    const code = await leaving.stop('SIGTERM');
    instances.delete('b');
    expect(code).toBe(0);
    await settled('one socket each');
    expect(signal.openPerTag().get('b') ?? 0).toBe(0);
    const [worst] = signal.worstGap();
    const story = [
      ...signal.events.filter((e) => e.includes(worst)),
      ...signal.kicks.filter((k) => k.device === worst).map((k) => `${k.from}->${k.to} ${k.at}`),
    ];
    expect(
      signal.longestGap(),
      `${worst}\n${story.join('\n')}\n` +
        [...instances.values(), leaving]
          .map((p) =>
            p.stderr
              .split('\n')
              .filter((l) => l.includes(worst.slice(0, 8)))
              .join('\n'),
          )
          .join('\n----\n'),
    ).toBeLessThan(500);
    expect(signal.fights, fightLog()).toBe(0);
    expect(leaving.stderr).toMatch(/handing every device over/);
    expect(push.requests.length).toBe(pushesBefore);
  });

  it('a frozen PostgreSQL (longer than a lease) keeps every socket; afterwards no device is fought over or lost', async () => {
    signal.resetGaps();
    const kicksBefore = signal.kicks.length;
    signalServer(pg.pid, 'SIGSTOP');
    try {
      // A registration meanwhile is answered internal_error (Molly tries again later), once the query gives up.
      const answer = fetch(`${await instances.get('c')!.url()}/`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          uuid: accounts[0]!.uuid,
          device_id: accounts[0]!.deviceId,
          password: accounts[0]!.password,
          endpoint: push.endpoint('during-outage'),
        }),
      }).then(async (r) => ((await r.json()) as { mollysocket: { status: string } }).mollysocket.status);
      await new Promise((r) => setTimeout(r, 3 * LEASE_MS));
      expect(await answer).toBe('internal_error');
      expect(signal.longestGap()).toBe(0); // the sockets stay while the database is away
    } finally {
      signalServer(pg.pid, 'SIGCONT');
    }
    await new Promise((r) => setTimeout(r, 2 * LEASE_MS)); // the instances renew first; nobody is reaped
    await settled('one socket each');
    expect(signal.longestGap()).toBe(0);
    expect(signal.kicks.length - kicksBefore).toBe(0); // nothing moved
    expect(signal.fights, fightLog()).toBe(0);
    for (const p of instances.values()) expect(p.child.exitCode).toBeNull();
    expect((await health(instances.get('c')!)).live_instances).toBe(2);
  });

  it('a frozen instance (longer than a lease) loses its devices without a gap, and takes its share back when it resumes', async () => {
    signal.resetGaps();
    const frozen = instances.get('c')!;
    const share = signal.openPerTag().get('c')!;
    expect(share).toBeGreaterThan(0);
    const kicksBefore = signal.kicks.length;
    frozen.child.kill('SIGSTOP');
    try {
      // The others reap it once its lease ran out, and connect its devices: Signal retires its sockets, one by one.
      await signal.until(() => (signal.openPerTag().get('c') ?? 0) === 0, 'the frozen instance replaced', 4 * LEASE_MS);
    } finally {
      frozen.child.kill('SIGCONT');
    }
    await frozen.waitFor(/the lease ran out and the others took these devices over; joining again/);
    await eventually(async () => (await health(frozen)).owned > 0, 'the share handed back', 10_000, 100);
    await settled('one socket each');
    expect(signal.longestGap()).toBeLessThan(500); // replaced before closed, both ways
    const kicks = signal.kicks.slice(kicksBefore);
    const away = kicks.filter((k) => k.from === 'c');
    const back = kicks.filter((k) => k.to === 'c');
    expect(away).toHaveLength(share); // each of its devices once
    expect(new Set(back.map((k) => k.device)).size).toBe(back.length); // and back at most once each
    expect(back.length).toBe(signal.openPerTag().get('c'));
    expect(await leaseMetric(frozen, 'lost')).toBe(share);
  });
});
