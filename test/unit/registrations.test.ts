import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import type { ResolvedEndpoint } from '../../src/policy.js';
import type { SignalVerdict } from '../../src/signal/link.js';
import { leftBehind } from '../../src/leftBehind.js';
import { decide, ENDPOINT_GONE, Registrations, type RegistrationRequest, type StoredAccount } from '../../src/registrations.js';
import { SqliteStore as Store } from '../../src/store/sqlite.js';
import { type Connection } from '../../src/store/store.js';
import { tempDir } from '../helpers/index.js';

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
/** The account has only this device (or none). */
const alone = (device: Connection | undefined): StoredAccount => ({ device, otherDeviceHealthy: false });

describe('registration decision table', () => {
  it('row 1: uuid not allowed -> invalid_uuid, nothing stored', () => {
    expect(decide(req, { uuidAllowed: false, endpointAllowed: true }, alone(undefined))).toEqual({ status: 'invalid_uuid', action: 'none', testPush: false });
  });
  it('row 2: endpoint not allowed -> invalid_endpoint, nothing stored', () => {
    expect(decide(req, { uuidAllowed: true, endpointAllowed: false }, alone(stored()))).toEqual({ status: 'invalid_endpoint', action: 'none', testPush: false });
  });
  it('row 3: new account device -> ok, store, start, test push', () => {
    expect(decide(req, allowed, alone(undefined))).toEqual({ status: 'ok', action: 'create', testPush: true });
  });
  it('row 4: same password, forbidden -> forbidden, nothing', () => {
    expect(decide(req, allowed, alone(stored({ forbidden: true, forbiddenReason: 'signal_403' })))).toEqual({ status: 'forbidden', action: 'none', testPush: false });
    expect(decide({ ...req, endpoint: 'https://push.example/up/new' }, allowed, alone(stored({ forbidden: true, forbiddenReason: 'signal_403' }))).status).toBe('forbidden');
  });
  it('row 4, beyond MollySocket: forbidden only because the endpoint was gone, and a new endpoint -> ok', () => {
    const gone = alone(stored({ forbidden: true, forbiddenReason: ENDPOINT_GONE }));
    expect(decide({ ...req, endpoint: 'https://push.example/up/new' }, allowed, gone)).toEqual({ status: 'ok', action: 'update_endpoint', testPush: true });
    expect(decide(req, allowed, gone).status).toBe('forbidden'); // the same gone endpoint again
  });
  it('row 5: same password, other endpoint -> ok, update; test push only with ping', () => {
    const other = { ...req, endpoint: 'https://push.example/up/other' };
    expect(decide(other, allowed, alone(stored()))).toEqual({ status: 'ok', action: 'update_endpoint', testPush: false });
    expect(decide({ ...other, ping: true }, allowed, alone(stored())).testPush).toBe(true);
  });
  it('row 6: identical registration -> ok, refresh only; test push only with ping', () => {
    expect(decide(req, allowed, alone(stored()))).toEqual({ status: 'ok', action: 'refresh', testPush: false });
    expect(decide({ ...req, ping: true }, allowed, alone(stored()))).toEqual({ status: 'ok', action: 'refresh', testPush: true });
  });
  it('row 7: other password for a forbidden connection -> ask Signal first; ok, replace credentials and test push once it accepts', () => {
    const forbidden = alone(stored({ forbidden: true }));
    const other = { ...req, password: 'new' };
    expect(decide(other, allowed, forbidden)).toEqual({ status: 'internal_error', action: 'ask_signal', testPush: false });
    expect(decide(other, allowed, forbidden, 'accepted')).toEqual({ status: 'ok', action: 'replace_credentials', testPush: true });
    expect(decide(other, allowed, forbidden, 'refused')).toEqual({ status: 'forbidden', action: 'none', testPush: false });
    expect(decide(other, allowed, forbidden, 'unreachable')).toEqual({ status: 'internal_error', action: 'none', testPush: false });
  });
  it('row 3b: a new device of an account with a healthy connection -> ask Signal first; ok and create once it accepts', () => {
    const account: StoredAccount = { device: undefined, otherDeviceHealthy: true };
    expect(decide(req, allowed, account)).toEqual({ status: 'internal_error', action: 'ask_signal', testPush: false });
    expect(decide(req, allowed, account, 'accepted')).toEqual({ status: 'ok', action: 'create', testPush: true });
    expect(decide(req, allowed, account, 'refused')).toEqual({ status: 'forbidden', action: 'none', testPush: false });
    expect(decide(req, allowed, account, 'unreachable')).toEqual({ status: 'internal_error', action: 'none', testPush: false });
    // The checks of rows 1 and 2 come before any question to Signal.
    expect(decide(req, { uuidAllowed: true, endpointAllowed: false }, account).action).toBe('none');
  });
  it('rows 4 to 6 and 8 never ask Signal, whatever the other devices', () => {
    const withHealthy = (device: Connection): StoredAccount => ({ device, otherDeviceHealthy: true });
    expect(decide(req, allowed, withHealthy(stored())).action).toBe('refresh');
    expect(decide(req, allowed, withHealthy(stored({ forbidden: true }))).status).toBe('forbidden');
    expect(decide({ ...req, password: 'new' }, allowed, withHealthy(stored())).status).toBe('internal_error');
    expect(decide({ ...req, password: 'new' }, allowed, withHealthy(stored())).action).toBe('none');
  });
  it('row 8: other password for a healthy connection -> internal_error, nothing', () => {
    expect(decide({ ...req, password: 'new' }, allowed, alone(stored()))).toEqual({ status: 'internal_error', action: 'none', testPush: false });
  });
  it('first match wins: a disallowed uuid is refused even with a disallowed endpoint', () => {
    expect(decide(req, { uuidAllowed: false, endpointAllowed: false }, alone(stored())).status).toBe('invalid_uuid');
  });
});

describe('forbidden connections left behind by a re-link', () => {
  const DAY = 86_400;
  const old = stored({ deviceId: 2, forbidden: true, forbiddenReason: 'signal_403', forbiddenAt: 10 * DAY, createdAt: DAY });
  const newer = stored({ deviceId: 3, createdAt: 9 * DAY });
  const connected = () => true;

  it('are removed once forbidden for the kept time, while a newer device of the account is connected', () => {
    expect(leftBehind([old, newer], connected, 17 * DAY, 7 * DAY)).toEqual([old]);
    expect(leftBehind([old, newer], connected, 17 * DAY - 1, 7 * DAY)).toEqual([]); // not yet
  });

  it('are kept while the newer device is not connected, or is forbidden too, or is older, or is of another account', () => {
    const later = 30 * DAY;
    expect(leftBehind([old, newer], () => false, later, 7 * DAY)).toEqual([]);
    expect(leftBehind([old, { ...newer, forbidden: true }], connected, later, 7 * DAY)).toEqual([]);
    expect(leftBehind([old, { ...newer, createdAt: 0 }], connected, later, 7 * DAY)).toEqual([]);
    expect(leftBehind([old, { ...newer, uuid: '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f' }], connected, later, 7 * DAY)).toEqual([]);
    expect(leftBehind([old], connected, later, 7 * DAY)).toEqual([]); // the account's only row stays
  });

  it('count from the last change when the time of the refusal is unknown (a row forbidden in MollySocket)', () => {
    const migrated = { ...old, forbiddenReason: 'forbidden_in_mollysocket', forbiddenAt: null, updatedAt: 5 * DAY };
    expect(leftBehind([migrated, newer], connected, 12 * DAY, 7 * DAY)).toEqual([migrated]);
    expect(leftBehind([migrated, newer], connected, 12 * DAY - 1, 7 * DAY)).toEqual([]);
  });
});

describe('applying a registration', () => {
  function harness(endpoint: ResolvedEndpoint, askSignal: () => Promise<SignalVerdict> = async () => 'accepted') {
    const store = Store.open(join(tempDir(), 'r.db'));
    const changed: Connection[] = [];
    const pinged: Connection[] = [];
    const registrations = new Registrations(
      store,
      {
        isUuidAllowed: () => true,
        checkEndpoint: async () => endpoint,
        connectionChanged: (c) => changed.push(c),
        sendTestPush: (c) => pinged.push(c),
        askSignal,
      },
      pino({ level: 'silent' }),
      { now: () => 1234 },
    );
    return { store, changed, pinged, registrations };
  }
  const allowed: ResolvedEndpoint = { ok: true, url: new URL(req.endpoint), address: { address: '93.184.216.34', family: 4 } };

  it('stores a new connection, starts it and sends a test push', async () => {
    const h = harness(allowed);
    expect(await h.registrations.register(req)).toBe('ok');
    expect(await h.store.get(req)).toMatchObject({ password: req.password, endpoint: req.endpoint, lastRegistration: 1234 });
    expect(h.changed).toHaveLength(1);
    expect(h.pinged).toHaveLength(1);
  });

  it('stores one spelling of a uuid: upper and lower case are one account device, one row', async () => {
    const h = harness(allowed);
    expect(await h.registrations.register({ ...req, uuid: req.uuid.toUpperCase() })).toBe('ok');
    expect(await h.registrations.register(req)).toBe('ok'); // the same registration: a refresh, not a second row
    expect(await h.registrations.register({ ...req, uuid: req.uuid.toUpperCase(), password: 'a takeover' })).toBe('internal_error');
    expect((await h.store.list()).map((c) => c.uuid)).toEqual([req.uuid]);
    expect(h.changed.map((c) => c.uuid)).toEqual([req.uuid]);
  });

  it('answers internal_error when the endpoint cannot be resolved now, so that Molly tries again; stores nothing', async () => {
    const h = harness({ ok: false, reason: 'cannot resolve push.example: EAI_AGAIN', transient: true });
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect(await h.store.list()).toEqual([]);
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });

  it('answers invalid_endpoint for an endpoint the policy refuses; stores nothing', async () => {
    const h = harness({ ok: false, reason: 'not in allowed_endpoints', transient: false });
    expect(await h.registrations.register(req)).toBe('invalid_endpoint');
    expect(await h.store.list()).toEqual([]);
  });

  it('asks Signal at most 8 times at once: beyond, internal_error at once (Molly tries again later), nothing stored', async () => {
    const answers: ((v: SignalVerdict) => void)[] = [];
    const h = harness(allowed, () => new Promise((resolve) => answers.push(resolve)));
    await h.store.put({ ...req, deviceId: 1 }, 1); // a healthy device: every new device id is a question to Signal
    const pending = Array.from({ length: 8 }, (_, i) => h.registrations.register({ ...req, deviceId: 10 + i }));
    await vi.waitFor(() => expect(answers).toHaveLength(8));
    expect(await h.registrations.register({ ...req, deviceId: 20 })).toBe('internal_error');
    expect(answers).toHaveLength(8);
    for (const answer of answers) answer('refused');
    expect(await Promise.all(pending)).toEqual(Array(8).fill('forbidden'));
    expect((await h.store.list()).map((c) => c.deviceId)).toEqual([1]);
    // Answered questions free their places.
    const next = h.registrations.register({ ...req, deviceId: 21 });
    await vi.waitFor(() => expect(answers).toHaveLength(9));
    answers[8]!('accepted');
    expect(await next).toBe('ok');
  });

  it('answers internal_error when the store fails', async () => {
    const h = harness(allowed);
    await h.store.close(); // every query now throws
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });

  it('writes nothing half: the row is written and read back in one statement, and a failing write starts nothing', async () => {
    const h = harness(allowed);
    const put = h.store.put.bind(h.store);
    h.store.put = async () => {
      throw new Error('disk I/O error');
    };
    expect(await h.registrations.register(req)).toBe('internal_error');
    h.store.put = put;
    expect(await h.store.list()).toEqual([]);
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });

  it('answers internal_error and stores nothing once the database file was deleted under the server', async () => {
    const h = harness(allowed);
    rmSync(h.store.path);
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });
});
