import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import type { ResolvedEndpoint } from '../../src/policy.js';
import type { SignalVerdict } from '../../src/signal/link.js';
import { leftBehind } from '../../src/leftBehind.js';
import { decide, ENDPOINT_GONE, Registrations, type RegistrationRequest } from '../../src/registrations.js';
import { QUESTION_LIMITS, SignalQuestions, type QuestionLimits } from '../../src/signal/questions.js';
import { openStore } from '../../src/store/open.js';
import { SqliteStore as Store } from '../../src/store/sqlite.js';
import { type Connection, type Store as AnyStore } from '../../src/store/store.js';
import { StoreWrites } from '../../src/store/writes.js';
import { freshDatabase, postgresMissing } from '../helpers/postgres.js';
import { memoryLogger, tempDir } from '../helpers/index.js';

const req: RegistrationRequest = {
  uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e',
  deviceId: 2,
  password: 'cGFzc3dvcmRwYXNzd29yZA==',
  endpoint: 'https://push.example/up/abc',
  ping: false,
};
const stored = (over: Partial<Connection> = {}): Connection => ({
  uuid: req.uuid,
  deviceId: req.deviceId,
  password: req.password,
  endpoint: req.endpoint,
  forbidden: false,
  forbiddenReason: null,
  forbiddenAt: null,
  lastRegistration: 1,
  createdAt: 1,
  updatedAt: 1,
  owner: null,
  epoch: 0,
  ...over,
});
const allowed = { uuidAllowed: true, endpointAllowed: true };

describe('registration decision table', () => {
  it('row 1: uuid not allowed -> invalid_uuid, nothing stored', () => {
    expect(decide(req, { uuidAllowed: false, endpointAllowed: true }, undefined)).toEqual({ status: 'invalid_uuid', action: 'none', testPush: false });
  });
  it('row 2: endpoint not allowed -> invalid_endpoint, nothing stored', () => {
    expect(decide(req, { uuidAllowed: true, endpointAllowed: false }, stored())).toEqual({ status: 'invalid_endpoint', action: 'none', testPush: false });
  });
  it('row 3: a new account device -> ask Signal first; ok, store, start and test push once it accepts', () => {
    expect(decide(req, allowed, undefined)).toEqual({ status: 'internal_error', action: 'ask_signal', testPush: false });
    expect(decide(req, allowed, undefined, 'accepted')).toEqual({ status: 'ok', action: 'create', testPush: true });
    expect(decide(req, allowed, undefined, 'refused')).toEqual({ status: 'forbidden', action: 'none', testPush: false });
    expect(decide(req, allowed, undefined, 'unreachable')).toEqual({ status: 'internal_error', action: 'none', testPush: false });
    // The checks of rows 1 and 2 come before any question to Signal.
    expect(decide(req, { uuidAllowed: true, endpointAllowed: false }, undefined).action).toBe('none');
  });
  it('row 3, full: a new device while max_connections are stored -> internal_error without asking Signal', () => {
    expect(decide(req, { ...allowed, full: true }, undefined)).toEqual({ status: 'internal_error', action: 'none', testPush: false });
    expect(decide(req, { ...allowed, full: true }, stored()).action).toBe('refresh'); // a stored device is not new
  });
  it('row 4: same password, forbidden -> forbidden, nothing', () => {
    expect(decide(req, allowed, stored({ forbidden: true, forbiddenReason: 'signal_403' }))).toEqual({ status: 'forbidden', action: 'none', testPush: false });
    expect(decide({ ...req, endpoint: 'https://push.example/up/new' }, allowed, stored({ forbidden: true, forbiddenReason: 'signal_403' })).status).toBe(
      'forbidden',
    );
  });
  it('row 4, beyond MollySocket: forbidden only because the endpoint was gone, and a new endpoint -> ok', () => {
    const gone = stored({ forbidden: true, forbiddenReason: ENDPOINT_GONE });
    expect(decide({ ...req, endpoint: 'https://push.example/up/new' }, allowed, gone)).toEqual({ status: 'ok', action: 'update_endpoint', testPush: true });
    expect(decide(req, allowed, gone).status).toBe('forbidden'); // the same gone endpoint again
  });
  it('row 5: same password, other endpoint -> ok, update; test push only with ping', () => {
    const other = { ...req, endpoint: 'https://push.example/up/other' };
    expect(decide(other, allowed, stored())).toEqual({ status: 'ok', action: 'update_endpoint', testPush: false });
    expect(decide({ ...other, ping: true }, allowed, stored()).testPush).toBe(true);
  });
  it('row 6: identical registration -> ok, refresh only; test push only with ping', () => {
    expect(decide(req, allowed, stored())).toEqual({ status: 'ok', action: 'refresh', testPush: false });
    expect(decide({ ...req, ping: true }, allowed, stored())).toEqual({ status: 'ok', action: 'refresh', testPush: true });
  });
  it('row 7: other password for a forbidden connection -> ask Signal first; ok, replace credentials and test push once it accepts', () => {
    const forbidden = stored({ forbidden: true });
    const other = { ...req, password: 'new' };
    expect(decide(other, allowed, forbidden)).toEqual({ status: 'internal_error', action: 'ask_signal', testPush: false });
    expect(decide(other, allowed, forbidden, 'accepted')).toEqual({ status: 'ok', action: 'replace_credentials', testPush: true });
    expect(decide(other, allowed, forbidden, 'refused')).toEqual({ status: 'forbidden', action: 'none', testPush: false });
    expect(decide(other, allowed, forbidden, 'unreachable')).toEqual({ status: 'internal_error', action: 'none', testPush: false });
  });
  it('row 8: other password for a healthy connection -> internal_error, nothing, whatever Signal says', () => {
    expect(decide({ ...req, password: 'new' }, allowed, stored())).toEqual({ status: 'internal_error', action: 'none', testPush: false });
    expect(decide({ ...req, password: 'new' }, allowed, stored(), 'accepted')).toEqual({ status: 'internal_error', action: 'none', testPush: false });
  });
  it('first match wins: a disallowed uuid is refused even with a disallowed endpoint', () => {
    expect(decide(req, { uuidAllowed: false, endpointAllowed: false }, stored()).status).toBe('invalid_uuid');
  });
});

describe('forbidden connections left behind by a re-link', () => {
  const old = stored({ deviceId: 2, forbidden: true, forbiddenReason: 'signal_403', forbiddenAt: 10 });
  const candidate = (newerDevices: number[]) => ({ conn: old, newerDevices, cursor: { since: 10, uuid: old.uuid, deviceId: 2 } });

  it('are those whose account has a newer device connected', () => {
    const connected = (k: { deviceId: number }) => k.deviceId === 3;
    expect(leftBehind([candidate([3])], connected)).toEqual([old]);
    expect(leftBehind([candidate([4, 3])], connected)).toEqual([old]);
    expect(leftBehind([candidate([4])], connected)).toEqual([]); // the newer device is not connected
    expect(leftBehind([candidate([])], connected)).toEqual([]); // no newer device: the account's row stays
  });
});

const reachable: ResolvedEndpoint = { ok: true, url: new URL(req.endpoint), address: { address: '93.184.216.34', family: 4 } };

interface Harness {
  store: AnyStore;
  changed: Connection[];
  pinged: Connection[];
  asked: Pick<RegistrationRequest, 'uuid' | 'deviceId' | 'password'>[];
  registrations: Registrations;
  writes: StoreWrites;
  logs: () => string[];
}

function harness(
  store: AnyStore,
  opts: {
    endpoint?: ResolvedEndpoint;
    askSignal?: (creds: Pick<RegistrationRequest, 'uuid' | 'deviceId' | 'password'>) => Promise<SignalVerdict>;
    maxConnections?: number;
    limits?: Partial<QuestionLimits>;
    now?: () => number;
  } = {},
): Harness {
  const changed: Connection[] = [];
  const pinged: Connection[] = [];
  const asked: Harness['asked'] = [];
  const { log, lines } = memoryLogger();
  const writes = new StoreWrites(log, { errors: store });
  const registrations = new Registrations(
    store,
    {
      isUuidAllowed: () => true,
      checkEndpoint: async () => opts.endpoint ?? reachable,
      connectionChanged: (c) => changed.push(c),
      sendTestPush: (c) => pinged.push(c),
      askSignal: (creds) => {
        asked.push(creds);
        return opts.askSignal ? opts.askSignal(creds) : Promise.resolve('accepted');
      },
    },
    log,
    {
      now: () => 1234,
      writes,
      ...(opts.maxConnections !== undefined && { maxConnections: opts.maxConnections }),
      questions: new SignalQuestions({ ...QUESTION_LIMITS, ...opts.limits }, opts.now),
    },
  );
  return { store, changed, pinged, asked, registrations, writes, logs: lines };
}

const sqlite = (): Store => Store.open(join(tempDir(), 'r.db'));

describe('applying a registration', () => {
  it('stores a new connection once Signal accepted its credentials, starts it and sends a test push', async () => {
    const h = harness(sqlite());
    expect(await h.registrations.register(req)).toBe('ok');
    expect(h.asked).toEqual([{ ...req }]);
    expect(await h.store.get(req)).toMatchObject({ password: req.password, endpoint: req.endpoint, lastRegistration: 1234 });
    expect(h.changed).toHaveLength(1);
    expect(h.pinged).toHaveLength(1);
    expect(await h.registrations.register(req)).toBe('ok'); // the same again: no question, no push
    expect([h.asked.length, h.pinged.length]).toEqual([1, 1]);
  });

  it('stores nothing and pushes nothing for a new device whose credentials Signal refuses: forbidden', async () => {
    const h = harness(sqlite(), { askSignal: async () => 'refused' });
    expect(await h.registrations.register(req)).toBe('forbidden');
    expect(await h.store.list()).toEqual([]);
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });

  it('stores one spelling of a uuid: upper and lower case are one account device, one row', async () => {
    const h = harness(sqlite());
    expect(await h.registrations.register({ ...req, uuid: req.uuid.toUpperCase() })).toBe('ok');
    expect(await h.registrations.register(req)).toBe('ok'); // the same registration: a refresh, not a second row
    expect(await h.registrations.register({ ...req, uuid: req.uuid.toUpperCase(), password: 'a takeover' })).toBe('internal_error');
    expect((await h.store.list()).map((c) => c.uuid)).toEqual([req.uuid]);
    expect(h.changed.map((c) => c.uuid)).toEqual([req.uuid]);
  });

  it('answers internal_error when the endpoint cannot be resolved now, so that Molly tries again; stores nothing', async () => {
    const h = harness(sqlite(), { endpoint: { ok: false, reason: 'cannot resolve push.example: EAI_AGAIN', transient: true } });
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect(await h.store.list()).toEqual([]);
    expect([...h.changed, ...h.pinged, ...h.asked]).toEqual([]);
  });

  it('answers invalid_endpoint for an endpoint the policy refuses; stores nothing, asks nothing', async () => {
    const h = harness(sqlite(), { endpoint: { ok: false, reason: 'not in allowed_endpoints', transient: false } });
    expect(await h.registrations.register(req)).toBe('invalid_endpoint');
    expect(await h.store.list()).toEqual([]);
    expect(h.asked).toEqual([]);
  });

  it('beyond max_connections, a new device answers internal_error without asking Signal, and the log says why once', async () => {
    const h = harness(sqlite(), { maxConnections: 2 });
    expect(await h.registrations.register({ ...req, deviceId: 1 })).toBe('ok');
    expect(await h.registrations.register({ ...req, deviceId: 2 })).toBe('ok');
    expect(await h.registrations.register({ ...req, deviceId: 3 })).toBe('internal_error');
    expect(await h.registrations.register({ ...req, deviceId: 4 })).toBe('internal_error');
    expect(h.asked.map((a) => a.deviceId)).toEqual([1, 2]);
    expect(await h.registrations.register({ ...req, deviceId: 1, ping: true })).toBe('ok'); // stored devices go on as before
    expect(h.logs().filter((l) => l.includes('max_connections connections are stored'))).toHaveLength(1);
    await h.store.remove({ uuid: req.uuid, deviceId: 2 });
    expect(await h.registrations.register({ ...req, deviceId: 3 })).toBe('ok');
    expect((await h.store.list()).map((c) => c.deviceId)).toEqual([1, 3]);
  });

  it('shares the questions to Signal fairly: one at a time per account, two per client address, eight in all', async () => {
    const answers: ((v: SignalVerdict) => void)[] = [];
    const h = harness(sqlite(), { askSignal: () => new Promise((resolve) => answers.push(resolve)) });
    const account = (i: number) => `6e3b5c1a-5a8e-4b6e-9c3e-${String(i).padStart(12, '0')}`;
    const flood = [
      h.registrations.register({ ...req, uuid: account(1) }, '203.0.113.9'),
      h.registrations.register({ ...req, uuid: account(2) }, '203.0.113.9'),
    ];
    await vi.waitFor(() => expect(answers).toHaveLength(2));
    // The flooding address has its two; the same account from elsewhere waits its turn; another client is served.
    expect(await h.registrations.register({ ...req, uuid: account(3) }, '203.0.113.9')).toBe('internal_error');
    expect(await h.registrations.register({ ...req, uuid: account(1), deviceId: 9 }, '198.51.100.7')).toBe('internal_error');
    const bystander = h.registrations.register({ ...req, uuid: account(4) }, '198.51.100.7');
    await vi.waitFor(() => expect(answers).toHaveLength(3));
    // An IPv6 client counts as its /64.
    const v6 = [
      h.registrations.register({ ...req, uuid: account(5) }, '2001:db8:1:2::1'),
      h.registrations.register({ ...req, uuid: account(6) }, '2001:db8:1:2::2'),
    ];
    await vi.waitFor(() => expect(answers).toHaveLength(5));
    expect(await h.registrations.register({ ...req, uuid: account(7) }, '2001:db8:1:2:ffff::3')).toBe('internal_error');
    const more = [7, 8, 9].map((i) => h.registrations.register({ ...req, uuid: account(10 + i) }, `192.0.2.${i}`));
    await vi.waitFor(() => expect(answers).toHaveLength(8));
    expect(await h.registrations.register({ ...req, uuid: account(30) }, '192.0.2.30')).toBe('internal_error'); // eight in all
    for (const answer of answers) answer('accepted');
    expect(await Promise.all([...flood, bystander, ...v6, ...more])).toEqual(Array(8).fill('ok'));
    // Answered questions free their places.
    const next = h.registrations.register({ ...req, uuid: account(3) }, '203.0.113.9');
    await vi.waitFor(() => expect(answers).toHaveLength(9));
    answers[8]!('accepted');
    expect(await next).toBe('ok');
  });

  it('stops asking Signal about an account it keeps refusing: forbidden without a question, for a cool-down', async () => {
    let now = 0;
    const h = harness(sqlite(), { askSignal: async () => 'refused', now: () => now });
    for (let i = 1; i <= 5; i++) expect(await h.registrations.register({ ...req, deviceId: i })).toBe('forbidden');
    expect(h.asked).toHaveLength(5);
    expect(await h.registrations.register({ ...req, deviceId: 6 })).toBe('forbidden');
    expect(await h.registrations.register({ ...req, uuid: '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f' })).toBe('forbidden'); // another account is asked
    expect(h.asked).toHaveLength(6);
    now = QUESTION_LIMITS.coolDownMs;
    expect(await h.registrations.register({ ...req, deviceId: 7 })).toBe('forbidden');
    expect(h.asked).toHaveLength(7); // asked again after the cool-down
  });

  it('answers internal_error when the store fails', async () => {
    const h = harness(sqlite());
    await h.store.close(); // every query now throws
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });

  it('writes nothing half: the row is written and read back in one statement, and a failing write starts nothing', async () => {
    const h = harness(sqlite());
    h.store.putIf = async () => {
      throw new Error('disk I/O error');
    };
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect(await h.store.list()).toEqual([]);
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });

  it('answers internal_error and stores nothing once the database file was deleted under the server', async () => {
    const store = sqlite();
    const h = harness(store);
    rmSync(store.path);
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });
});

/** Each backend, and whether it can keep a NUL byte in text (SQLite can; PostgreSQL refuses it). */
type BackendUnderTest = [string, () => Promise<AnyStore>, { keepsNul: boolean }];
const backends: BackendUnderTest[] = [
  ['SQLite', async () => (await openStore(join(tempDir(), 'c.db'))).store, { keepsNul: true }],
  ...(postgresMissing ? [] : [['PostgreSQL', async () => (await openStore(await freshDatabase())).store, { keepsNul: false }] as BackendUnderTest]),
];

describe.each(backends)('registrations on %s', (_name, open, { keepsNul }) => {
  it('ten concurrent registrations of one fresh device with different passwords: one ok, the others internal_error (row 8)', async () => {
    const store = await open();
    // Signal accepts them all, and every one may ask: only the store decides who was first.
    const h = harness(store, { limits: { perAccount: 10, perAddress: 10, total: 10 } });
    const passwords = Array.from({ length: 10 }, (_, i) => `password-${i}`);
    const answers = await Promise.all(passwords.map((password) => h.registrations.register({ ...req, password })));
    expect([...answers].sort()).toEqual(['internal_error', 'ok', ...Array(8).fill('internal_error')].sort());
    const winner = passwords[answers.indexOf('ok')];
    expect(await store.get(req)).toMatchObject({ password: winner });
    expect(h.changed.map((c) => c.password)).toEqual([winner]);
    expect(h.pinged.map((c) => c.password)).toEqual([winner]);
    await store.close();
  });

  it("a registration whose data the database cannot store is its own error, never the store's health", async () => {
    const store = await open();
    const h = harness(store);
    const nul = { ...req, password: 'pass\u0000word' };
    const status = await h.registrations.register(nul);
    expect(h.writes.failing()).toBeUndefined();
    expect(await store.healthy()).toBe(true);
    if (!keepsNul) {
      // PostgreSQL cannot keep a NUL byte in text: one line, no stack, and nothing stored.
      expect(status).toBe('internal_error');
      expect(await store.list()).toEqual([]);
      const line = h.logs().find((l) => l.includes('the database cannot store what it sent'));
      expect(line).toContain('"code":"22021"');
      expect(line).not.toContain('stack');
    } else {
      expect(status).toBe('ok');
    }
    expect(await h.registrations.register({ ...req, deviceId: 7 })).toBe('ok'); // the store serves the next one
    await store.close();
  });
});
