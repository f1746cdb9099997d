import { join } from 'node:path';
import WebSocket from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { LINK_LIMITS } from '../../src/signal/link.js';
import { Solo } from '../../src/cluster/solo.js';
import { RelayEvents } from '../../src/events.js';
import { Supervisor, type SupervisorOptions } from '../../src/signal/supervisor.js';
import { SqliteStore as Store } from '../../src/store/sqlite.js';
import { type Connection } from '../../src/store/store.js';
import { ManualClock } from '../fakes/clock.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { eventually, flushPromises, memoryLogger, tempDir } from '../helpers/index.js';

const A: Account = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 2, password: 'pw-A+/==' };
const B: Account = { uuid: '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f', deviceId: 1, password: 'pw-B' };
const ENDPOINT = 'https://push.example/up/token';

interface Harness {
  signal: FakeSignalServer;
  store: Store;
  dbPath: string;
  clock: ManualClock;
  sup: Supervisor;
  urgent: Connection[];
  checks: Connection[];
  logs: () => string[];
}

const LINK_OPTIONS = {
  url: '',
  ca: undefined,
  userAgent: 'Signal-Android/7.60.0 test',
  connectTimeoutMs: 30_000,
  keepaliveIntervalMs: 30_000,
  keepaliveTimeoutMs: 20_000,
};

const running: Harness[] = [];

afterEach(async () => {
  for (const h of running.splice(0)) {
    await h.sup.stop();
    await h.store.close();
    await h.signal.close();
  }
});

async function harness(
  over: Partial<SupervisorOptions> = {},
  at?: string | ((signal: FakeSignalServer) => Promise<string>),
  random: () => number = () => 1,
): Promise<Harness> {
  const signal = await FakeSignalServer.start({ tls: false });
  const url = typeof at === 'function' ? await at(signal) : at;
  const dbPath = join(tempDir(), 'mollysocket.db');
  const store = Store.open(dbPath);
  const clock = new ManualClock();
  const { log, lines } = memoryLogger();
  const urgent: Connection[] = [];
  const checks: Connection[] = [];
  const options: SupervisorOptions = {
    backoff: { baseMs: 1_000, capMs: 300_000 },
    healthyAfterMs: 60_000,
    ramp: { ratePerSecond: 100, concurrency: 50 },
    deliveryCheckIntervalMs: 3600_000,
    keepaliveTickMs: 1_000,
    leftBehindKeptMs: 7 * 86_400_000,
    leftBehindSweepMs: 3_600_000,
    forbiddenRetentionMs: 30 * 86_400_000,
    recoveryIntervalMs: 1_000,
    handOverTimeoutMs: 30_000,
    ...over,
    link: { ...LINK_OPTIONS, ...over.link, url: url ?? signal.url },
  };
  // random() = 1 by default: every backoff delay is the whole step, so the schedule is exact.
  const events = new RelayEvents();
  events.on('urgent', (c) => urgent.push(c));
  events.on('deliveryCheck', (c) => checks.push(c));
  const sup = new Supervisor(options, {
    store,
    ownership: new Solo(store, 2_000, clock, log), // the CLI's changes are seen within 2 s
    log,
    clock,
    random,
    events,
  });
  const h = { signal, store, dbPath, clock, sup, urgent, checks, logs: lines };
  running.push(h);
  return h;
}

async function register(h: Harness, account: Account, endpoint = ENDPOINT): Promise<void> {
  h.signal.addAccount(account);
  await h.store.put({ ...account, endpoint }, 1);
}

/**
 * Lets `ms` of clock time pass in slices, with the real I/O of each slice in between: every handshake it started has
 * ended (connected or refused) and every keepalive it sent is answered (unless the fake is told to stay silent).
 */
async function passTime(h: Harness, ms: number, sliceMs = 5_000): Promise<void> {
  for (let passed = 0; passed < ms; passed += sliceMs) {
    h.clock.advance(Math.min(sliceMs, ms - passed));
    await eventually(
      () => h.sup.counts().connecting === h.sup.connectQueue && (h.signal.silentKeepalive || h.sup.awaitingKeepalives() === 0),
      'the handshakes and keepalives of this slice',
    );
  }
}

const connected = (h: Harness, a: Account) => eventually(() => h.sup.state(a) === 'connected', `${a.uuid} connected`);
const inState = (h: Harness, a: Account, state: string) => eventually(() => h.sup.state(a) === state, `state ${state}`);
/** The retry delays the supervisor announced, in order. */
const retryDelays = (h: Harness): number[] =>
  h.logs().flatMap((l) => {
    const m = /"retryInMs":(\d+)/.exec(l);
    return m ? [Number(m[1])] : [];
  });

describe('one socket per account device', () => {
  it('opens one socket, ignores identical registrations, and replaces it when the endpoint changes, old one first', async () => {
    const h = await harness();
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    expect(h.signal.open(A.uuid, A.deviceId)).toHaveLength(1);

    const revision = h.sup.revision;
    h.sup.sync((await h.store.get(A))!); // Molly re-registers on every unlock
    await flushPromises();
    expect(h.sup.revision).toBe(revision); // a new socket would have changed the state at once
    expect(h.signal.sessions).toHaveLength(1);

    await h.store.put({ ...A, endpoint: 'https://push.example/up/new' }, 2);
    h.sup.sync((await h.store.get(A))!);
    await eventually(() => h.signal.sessions.length === 2 && h.sup.state(A) === 'connected', 'the replacement');
    const name = `${A.uuid}.${A.deviceId}`;
    expect(h.signal.events).toEqual([`open ${name}`, `close ${name} 1000`, `open ${name}`]);
    expect(h.signal.open(A.uuid, A.deviceId)).toHaveLength(1);
  });

  it('replaces the socket when the credentials change', async () => {
    const h = await harness();
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    const renewed = { ...A, password: 'new-password' };
    h.signal.addAccount(renewed);
    await h.store.put({ ...renewed, endpoint: ENDPOINT }, 2);
    h.sup.sync((await h.store.get(A))!);
    await eventually(() => h.signal.sessions.length === 2 && h.sup.state(A) === 'connected', 'the replacement');
    const basic = Buffer.from(`${A.uuid}.${A.deviceId}:new-password`).toString('base64');
    expect(h.signal.sessions[1]!.headers.authorization).toBe(`Basic ${basic}`);
    expect(h.signal.open(A.uuid, A.deviceId)).toHaveLength(1);
  });
});

describe('timeouts', () => {
  it('gives up a connect that does not complete in 30 s, and tries again after the backoff', async () => {
    const h = await harness();
    await register(h, A);
    h.signal.refusals.push({ status: 0 }); // the upgrade is never answered
    await h.sup.start();
    await eventually(() => h.signal.upgrades.length === 1, 'the hanging attempt');
    h.clock.advance(29_999);
    await flushPromises();
    expect(h.sup.state(A)).toBe('connecting');
    h.clock.advance(1);
    await inState(h, A, 'backoff');
    expect(h.logs().join('')).toMatch(/connect timeout/);
    h.clock.advance(1_000);
    await connected(h, A);
  });

  it('sends a keepalive every 30 s from the moment the socket opens, and replaces a socket whose keepalive goes unanswered for 20 s', async () => {
    const h = await harness();
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    const session = h.signal.open(A.uuid, A.deviceId)[0]!;
    h.clock.advance(29_999);
    await flushPromises();
    expect(h.sup.awaitingKeepalives()).toBe(0); // a keepalive is awaited from the moment it is sent
    expect(session.requests).toHaveLength(0);
    h.clock.advance(1);
    await eventually(() => session.requests.length === 1, 'a keepalive');
    expect(session.requests[0]).toMatchObject({ verb: 'GET', path: '/v1/keepalive' });
    await eventually(() => h.sup.awaitingKeepalives() === 0, 'the answer');
    h.clock.advance(30_000);
    await eventually(() => session.requests.length === 2, 'a second keepalive');
    await eventually(() => h.sup.awaitingKeepalives() === 0, 'the second answer');
    expect(h.sup.state(A)).toBe('connected');

    h.signal.silentKeepalive = true;
    h.clock.advance(30_000);
    await eventually(() => session.requests.length === 3, 'an unanswered keepalive');
    h.clock.advance(19_999);
    await flushPromises();
    expect(h.sup.state(A)).toBe('connected');
    h.clock.advance(1);
    await inState(h, A, 'backoff');
    expect(h.logs().join('')).toMatch(/keepalive timeout/);
    h.signal.silentKeepalive = false;
    h.clock.advance(1_000);
    await eventually(() => h.signal.sessions.length === 2 && h.sup.state(A) === 'connected', 'a new socket');
  });
});

describe('server requests', () => {
  it('answers every request, skips malformed frames and keeps the socket', async () => {
    const h = await harness();
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    const session = h.signal.open(A.uuid, A.deviceId)[0]!;
    h.signal.sendRaw(session, Uint8Array.from([0x0a, 0xff, 0xff, 0xff]));
    expect(await h.signal.sendEnvelope(session)).toEqual({ status: 200, message: 'OK' });
    expect(await h.signal.sendEnvelope(session, { urgent: false })).toEqual({ status: 200, message: 'OK' });
    expect(await h.signal.request(session, 'PUT', '/api/v1/queue/empty')).toEqual({ status: 200, message: 'OK' });
    expect((await h.signal.request(session, 'PUT', '/api/v1/something')).status).toBe(400);
    expect(h.urgent).toHaveLength(1);
    expect(h.signal.sessions).toHaveLength(1);
    expect(h.sup.state(A)).toBe('connected');
  });
});

describe('a Signal server that would make a link hold memory without bound', () => {
  it('a frame over the bound closes that link only (1009), which is retried with backoff', async () => {
    const h = await harness();
    await register(h, A);
    await register(h, B);
    await h.sup.start();
    await connected(h, A);
    await connected(h, B);
    h.signal.sendRaw(h.signal.open(A.uuid, A.deviceId)[0]!, new Uint8Array(LINK_LIMITS.maxFrameBytes + 1));
    await inState(h, A, 'backoff');
    expect(h.logs().join('')).toMatch(/closed 1009 a frame over 1048576 bytes/);
    expect(retryDelays(h)).toEqual([1_000]);
    expect(h.sup.state(B)).toBe('connected');
    expect(await h.signal.sendEnvelope(h.signal.open(B.uuid, B.deviceId)[0]!)).toEqual({ status: 200, message: 'OK' });
    h.clock.advance(1_000);
    await eventually(() => h.signal.open(A.uuid, A.deviceId).length === 1 && h.sup.state(A) === 'connected', 'A back');
  });

  it('a link whose answers Signal does not read is closed (1008) once they pass the bound', async () => {
    const h = await harness({ link: { ...LINK_OPTIONS, limits: { ...LINK_LIMITS, maxUnsentBytes: 64 * 1024 } } }, (signal) => signal.listenUnix());
    await register(h, A);
    await register(h, B);
    await h.sup.start();
    await connected(h, A);
    await connected(h, B);
    const session = h.signal.open(A.uuid, A.deviceId)[0]!;
    h.signal.stopReading(session);
    let sent = 0;
    while (h.sup.state(A) === 'connected' && sent < 1_000_000) {
      await h.signal.flood(session, 2_000);
      sent += 2_000;
    }
    await inState(h, A, 'backoff');
    expect(h.logs().join('')).toMatch(/closed 1008 Signal left over 65536 bytes of answers unread/);
    expect(h.sup.state(B)).toBe('connected');
    expect(await h.signal.sendEnvelope(h.signal.open(B.uuid, B.deviceId)[0]!)).toEqual({ status: 200, message: 'OK' });
  });
});

describe('outcomes', () => {
  it('403 at the upgrade: forbidden with reason and time stored, no more attempts, back after new credentials', async () => {
    const h = await harness();
    await h.store.put({ ...A, endpoint: ENDPOINT }, 1); // the fake does not know these credentials
    await h.sup.start();
    await inState(h, A, 'forbidden');
    expect(await h.store.get(A)).toMatchObject({ forbidden: true, forbiddenReason: 'signal_403', forbiddenAt: Math.floor(h.clock.now() / 1000) });
    const revision = h.sup.revision;
    h.clock.advance(3600_000);
    await flushPromises();
    expect(h.sup.revision).toBe(revision); // an attempt would have left the forbidden state at once
    expect(h.signal.upgrades).toHaveLength(1);

    const relinked = { ...A, password: 'relinked' };
    h.signal.addAccount(relinked);
    await h.store.put({ ...relinked, endpoint: ENDPOINT }, 2);
    h.sup.sync((await h.store.get(A))!);
    await connected(h, A);
  });

  it('a 403 for credentials another process replaced meanwhile forbids nothing: the new ones connect', async () => {
    const h = await harness();
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    // The CLI stores new credentials; before the next poll, the old socket ends and Signal refuses the old password.
    const relinked = { ...A, password: 'relinked' };
    const cli = Store.open(h.dbPath);
    await cli.put({ ...relinked, endpoint: ENDPOINT }, 2);
    await cli.close();
    h.signal.addAccount(relinked);
    h.signal.open(A.uuid, A.deviceId)[0]!.ws.close(4401);
    await eventually(() => h.sup.state(A) === 'backoff', 'backoff');
    const revision = h.sup.revision;
    h.clock.advance(1_000); // the retry, before the store is polled again
    await h.signal.until(() => h.signal.upgrades.some((u) => u.status === 403), 'the 403 for the old password');
    await eventually(() => h.sup.revision > revision + 1, 'the 403 handled'); // connecting, then what the 403 made of it
    await flushPromises();
    expect(await h.store.get(A)).toMatchObject({ forbidden: false, password: 'relinked' });
    await passTime(h, 2_000); // the poll brings the new credentials
    await connected(h, A);
    expect(h.signal.open(A.uuid, A.deviceId)).toHaveLength(1);
  });

  it('4401: reconnects, and a 403 then tells that the device is gone', async () => {
    const h = await harness();
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    h.signal.removeAccount(A);
    h.signal.open(A.uuid, A.deviceId)[0]!.ws.close(4401, 'Reauth');
    await inState(h, A, 'backoff');
    expect(h.logs().join('')).toMatch(/4401/);
    h.clock.advance(1_000);
    await inState(h, A, 'forbidden');
    expect((await h.store.get(A))?.forbiddenReason).toBe('signal_403');
  });

  it('4409 from a second connection of the same device: backs off and sends at most one delivery check per interval', async () => {
    const h = await harness({ deliveryCheckIntervalMs: 60_000 });
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    const basic = Buffer.from(`${A.uuid}.${A.deviceId}:${A.password}`).toString('base64');
    const intruder = () => new WebSocket(h.signal.url, { headers: { Authorization: `Basic ${basic}` } });

    const other = intruder(); // another relay with the same credentials: Signal closes ours with 4409
    await inState(h, A, 'backoff');
    expect(h.checks).toHaveLength(1);
    other.close();
    h.clock.advance(1_000);
    await connected(h, A);

    const again = intruder();
    await inState(h, A, 'backoff');
    expect(h.checks).toHaveLength(1); // within the hour: no second check
    again.close();
    expect(retryDelays(h)).toEqual([1_000, 2_000]); // not healthy for a minute in between: the backoff grows
    h.clock.advance(2_000);
    await connected(h, A);
    await passTime(h, 60_000); // the delivery-check interval, shortened in this test (an hour by default)

    const later = intruder();
    await inState(h, A, 'backoff');
    expect(h.checks).toHaveLength(2);
    later.close();
  });

  it('429 with Retry-After: waits as long as the server asked', async () => {
    const h = await harness();
    await register(h, A);
    h.signal.refusals.push({ status: 429, headers: { 'Retry-After': '7' } });
    await h.sup.start();
    await inState(h, A, 'backoff');
    expect(retryDelays(h)).toEqual([7_000]);
    const revision = h.sup.revision;
    h.clock.advance(6_999);
    await flushPromises();
    expect(h.sup.revision).toBe(revision); // still in backoff: an attempt would have changed the state at once
    expect(h.signal.upgrades).toHaveLength(1);
    h.clock.advance(1);
    await connected(h, A);
  });

  it('499, 5xx and network errors: retried with backoff', async () => {
    const h = await harness();
    await register(h, A);
    h.signal.refusals.push({ status: 499 }, { status: 503 }, { status: 502 });
    await h.sup.start();
    for (const delay of [1_000, 2_000, 4_000]) {
      await inState(h, A, 'backoff');
      h.clock.advance(delay);
    }
    await connected(h, A);
    expect(h.signal.upgrades.map((u) => u.status)).toEqual([499, 503, 502, 101]);
    expect(h.logs().join('')).toMatch(/499.*user_agent/);
  });
});

describe('backoff', () => {
  it('grows from about a second and stays at the cap while Signal is unreachable', async () => {
    const h = await harness({}, 'ws://127.0.0.1:1/v1/websocket/'); // nothing listens there
    await register(h, A);
    await h.sup.start();
    for (let i = 0; i < 12; i++) {
      await eventually(() => retryDelays(h).length === i + 1, `failure ${i + 1}`);
      h.clock.advance(retryDelays(h)[i]!);
    }
    expect(retryDelays(h)).toEqual([1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300].map((s) => s * 1000));
    expect(h.logs().join('')).toMatch(/network: .*ECONNREFUSED/);
  });

  it('starts again from the base once a socket stayed healthy for a minute', async () => {
    const h = await harness();
    await register(h, A);
    h.signal.refusals.push({ status: 503 }, { status: 503 });
    await h.sup.start();
    await inState(h, A, 'backoff');
    h.clock.advance(1_000);
    await eventually(() => retryDelays(h).length === 2, 'second failure');
    h.clock.advance(2_000);
    await connected(h, A);
    h.clock.advance(10_000);
    h.signal.open(A.uuid, A.deviceId)[0]!.ws.close(1011, 'short-lived');
    await eventually(() => retryDelays(h).length === 3, 'third failure');
    expect(retryDelays(h)[2]).toBe(4_000); // open only 10 s: the backoff goes on growing
    h.clock.advance(4_000);
    await connected(h, A);
    await passTime(h, 60_000); // keepalives answered meanwhile
    h.signal.open(A.uuid, A.deviceId)[0]!.ws.close(1011, 'after a healthy minute');
    await eventually(() => retryDelays(h).length === 4, 'fourth failure');
    expect(retryDelays(h)[3]).toBe(1_000);
  });
});

describe('recovery after an outage', () => {
  it('reconnects every account within seconds once Signal is back, however long their backoff had grown', async () => {
    let seed = 7;
    const seeded = (): number => (seed = (seed * 48271) % 2147483647) / 2147483647; // jitter spreads the retries
    const h = await harness({}, undefined, seeded);
    const accounts = Array.from({ length: 20 }, (_, i) => ({
      uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
      deviceId: 1,
      password: `pw${i}`,
    }));
    for (const a of accounts) await register(h, a);
    await h.sup.start();
    await eventually(() => accounts.every((a) => h.sup.state(a) === 'connected'), 'all connected');

    // Blackout: keepalives go unanswered, so every socket is given up; reconnects are refused for a while.
    h.signal.silentKeepalive = true;
    h.signal.refusals.push(...Array.from({ length: accounts.length * 6 }, () => ({ status: 503 })));
    await passTime(h, 50_000);
    h.signal.silentKeepalive = false;
    let elapsed = 0;
    while (h.signal.refusals.length > 0 && elapsed < 3600_000) {
      await passTime(h, 1_000, 1_000);
      elapsed += 1_000;
    }
    expect(h.signal.refusals).toHaveLength(0); // Signal answers again from here on
    const waiting = accounts.filter((a) => h.sup.state(a) === 'backoff');
    expect(waiting.length).toBeGreaterThan(0);
    expect(Math.max(...retryDelays(h).slice(-accounts.length))).toBeGreaterThan(10_000); // long backoffs by now

    // The first account whose retry comes up connects; the rest follow through the ramp within seconds.
    const before = h.signal.sessions.length;
    for (let t = 0; t < 600 && h.signal.sessions.length === before; t++) await passTime(h, 1_000, 1_000);
    await passTime(h, 3_000, 1_000);
    // No more clock time passes from here: only the prompt retries can connect the rest (real I/O may be slow).
    await eventually(() => accounts.every((a) => h.sup.state(a) === 'connected'), 'every account reconnected');
    for (const a of accounts) expect(h.signal.open(a.uuid, a.deviceId)).toHaveLength(1);
  });
});

describe('start-up ramp', () => {
  it('connects many stored connections with bounded rate and concurrency', async () => {
    const h = await harness({ ramp: { ratePerSecond: 10, concurrency: 5 } });
    const accounts = Array.from({ length: 30 }, (_, i) => ({
      uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
      deviceId: 1,
      password: `pw${i}`,
    }));
    for (const a of accounts) await register(h, a);
    await h.sup.start();
    await eventually(() => h.signal.sessions.length === 5, 'the first burst');
    expect(h.sup.connectQueue).toBe(25); // the burst is bounded, however fast the handshakes are
    expect(h.signal.upgrades).toHaveLength(5);
    for (let second = 1; second <= 3; second++) {
      h.clock.advance(1_000);
      await eventually(() => h.signal.upgrades.length >= Math.min(30, 5 + 10 * second), `second ${second}`);
      expect(30 - h.sup.connectQueue).toBeLessThanOrEqual(5 + 10 * second); // started so far, by the ramp's own count
      expect(h.signal.upgrades.length).toBeLessThanOrEqual(5 + 10 * second);
    }
    await eventually(() => h.sup.counts().connected === 30, 'all connected');
  });
});

describe('following the store', () => {
  it('picks up what the command line adds, removes and re-enables, within a poll', async () => {
    const h = await harness();
    await h.sup.start();
    const cli = Store.open(h.dbPath);
    try {
      h.signal.addAccount(A);
      await cli.put({ ...A, endpoint: ENDPOINT }, 1);
      h.clock.advance(2_000);
      await connected(h, A);

      await cli.remove({ uuid: A.uuid });
      h.clock.advance(2_000);
      await eventually(() => h.signal.events.includes(`close ${A.uuid}.${A.deviceId} 1000`), 'the socket closed');
      expect(h.sup.state(A)).toBeUndefined();

      await cli.put({ ...B, endpoint: ENDPOINT }, 2); // unknown to Signal: 403
      h.clock.advance(2_000);
      await inState(h, B, 'forbidden');
      h.signal.addAccount(B); // the user fixed it; `connection enable` clears the flag
      await cli.enable(B, 3);
      h.clock.advance(2_000);
      await connected(h, B);
    } finally {
      await cli.close();
    }
  });
});

describe('forbidden connections left behind by a re-link', () => {
  it('are removed once forbidden for the kept time, while a newer device of the account is connected', async () => {
    const h = await harness({ leftBehindKeptMs: 60_000, leftBehindSweepMs: 10_000 });
    const now = () => Math.floor(h.clock.now() / 1000);
    const unlinked = { ...A, deviceId: 2 };
    const relinked: Account = { ...A, deviceId: 3, password: 'pw-relinked' };
    await h.store.put({ ...unlinked, endpoint: ENDPOINT }, now() - 3600);
    await h.store.setForbidden(unlinked, 'signal_403', { password: unlinked.password }, now());
    const other = { ...B, deviceId: 5 }; // another account's forbidden row, with no newer device: it stays
    await h.store.put({ ...other, endpoint: ENDPOINT }, now() - 3600);
    await h.store.setForbidden(other, 'signal_403', { password: other.password }, now());
    h.signal.addAccount(relinked);
    await h.store.put({ ...relinked, endpoint: ENDPOINT }, now()); // registered here after the unlinked device
    await h.sup.start();
    await connected(h, relinked);

    await passTime(h, 50_000);
    expect(await h.store.get(unlinked)).toBeDefined(); // forbidden for 50 s: kept
    await passTime(h, 20_000);
    expect(await h.store.get(unlinked)).toBeUndefined();
    expect(h.sup.state(unlinked)).toBeUndefined();
    expect(await h.store.get(relinked)).toMatchObject({ forbidden: false });
    expect(h.sup.state(relinked)).toBe('connected');
    expect(await h.store.get(other)).toMatchObject({ forbidden: true });
    expect(h.logs().join('')).toContain('removed a forbidden connection: a newer device of the account is connected');
  });

  it('sweep 30,000 forbidden rows in batches, yielding between them: left behind and past forbidden_retention_days removed, the rest kept', async () => {
    const DAY = 86_400;
    const h = await harness({ leftBehindKeptMs: 7 * DAY * 1000, leftBehindSweepMs: 10_000, forbiddenRetentionMs: 30 * DAY * 1000 });
    const now = Math.floor(h.clock.now() / 1000);
    const row = (uuid: string, deviceId: number, forbiddenAt: number | null, createdAt: number): Connection => ({
      uuid,
      deviceId,
      password: 'made-up',
      endpoint: ENDPOINT,
      forbidden: forbiddenAt !== null,
      forbiddenReason: forbiddenAt !== null ? 'signal_403' : null,
      forbiddenAt,
      lastRegistration: createdAt,
      createdAt,
      updatedAt: forbiddenAt ?? createdAt,
      owner: null,
      epoch: 0,
    });
    const stranger = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
    // What a registration flood leaves: made-up accounts refused by Signal, 31 days (gone) or 8 days ago (kept).
    const flood = Array.from({ length: 30_000 }, (_, i) => row(stranger(i), 1, now - (i % 2 === 0 ? 31 : 8) * DAY, now - 40 * DAY));
    const unlinked = row(A.uuid, 1, now - 8 * DAY, now - 100 * DAY); // left behind by a re-link to device 2
    await h.store.importConnections([...flood, unlinked]);
    h.signal.addAccount(A);
    await h.store.put({ ...A, endpoint: ENDPOINT }, now - 2 * DAY); // device 2, registered after device 1, connected
    const steps: string[] = [];
    for (const name of ['forbiddenWithNewerDevices', 'removeForbiddenSince'] as const) {
      const original = h.store[name].bind(h.store) as (...args: unknown[]) => Promise<unknown>;
      (h.store as unknown as Record<string, unknown>)[name] = (...args: unknown[]) => {
        steps.push(name);
        return original(...args);
      };
    }
    await h.sup.start();
    await connected(h, A);
    let turning = true;
    const turn = (): void => {
      if (steps.at(-1) !== 'turn') steps.push('turn');
      if (turning) setImmediate(turn);
    };
    turn();
    h.clock.advance(10_000); // keepalives are not due yet: device 2 stays connected
    await eventually(() => h.logs().some((l) => l.includes('forbidden_retention_days')), 'the end of the sweep', 60_000, 50);
    turning = false;

    const kept = await h.store.list();
    expect(kept).toHaveLength(15_001);
    expect(kept.filter((c) => c.uuid === A.uuid).map((c) => c.deviceId)).toEqual([2]);
    expect(kept.filter((c) => c.forbidden).every((c) => c.forbiddenAt === now - 8 * DAY)).toBe(true);
    expect(h.sup.state(unlinked)).toBeUndefined();
    expect(h.sup.state({ uuid: stranger(0), deviceId: 1 })).toBeUndefined();
    expect(h.sup.state({ uuid: stranger(1), deviceId: 1 })).toBe('forbidden');
    // Every batch is one short statement: the event loop ran between any two.
    const batches = steps.filter((s) => s !== 'turn').length;
    expect(batches).toBeGreaterThanOrEqual(30_001 / 500 + 15_000 / 500);
    expect(steps.some((s, i) => s !== 'turn' && steps[i + 1] !== undefined && steps[i + 1] !== 'turn')).toBe(false);
    expect(h.logs().join('')).toContain('"count":15000');
  }, 120_000);
});

describe('state', () => {
  it('logs one line per state change, with the uuid shortened and no secrets', async () => {
    const h = await harness();
    await register(h, A);
    await h.sup.start();
    await connected(h, A);
    h.sup.sync((await h.store.get(A))!);
    const stateLines = h.logs().filter((l) => l.includes('"msg":"connection state"'));
    expect(stateLines.map((l) => (JSON.parse(l) as { state: string }).state)).toEqual(['connecting', 'connected']);
    const all = h.logs().join('');
    expect(all).not.toContain(A.uuid);
    expect(all).not.toContain(A.password);
    expect(all).toContain(A.uuid.slice(0, 8));
    expect(h.sup.counts()).toMatchObject({ total: 1, connected: 1 });
    expect(h.sup.statuses()).toEqual([{ uuid: A.uuid, deviceId: A.deviceId, state: 'connected', reason: 'open', since: h.clock.now() }]);
  });

  it('closes every socket with 1000 on stop', async () => {
    const h = await harness();
    await register(h, A);
    await register(h, B);
    await h.sup.start();
    await connected(h, A);
    await connected(h, B);
    await h.sup.stop();
    await eventually(() => h.signal.events.filter((e) => e.endsWith(' 1000')).length === 2, 'both closed');
    expect(h.sup.counts()).toMatchObject({ stopped: 2 });
  });
});
