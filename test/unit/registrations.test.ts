import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { ResolvedEndpoint } from '../../src/policy.js';
import { decide, ENDPOINT_GONE, Registrations, type RegistrationRequest } from '../../src/registrations.js';
import { SqliteStore as Store, type Connection } from '../../src/store.js';
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

describe('registration decision table (PROTOCOL.md section 1)', () => {
  it('row 1: uuid not allowed -> invalid_uuid, nothing stored', () => {
    expect(decide(req, { uuidAllowed: false, endpointAllowed: true }, undefined)).toEqual({ status: 'invalid_uuid', action: 'none', testPush: false });
  });
  it('row 2: endpoint not allowed -> invalid_endpoint, nothing stored', () => {
    expect(decide(req, { uuidAllowed: true, endpointAllowed: false }, stored())).toEqual({ status: 'invalid_endpoint', action: 'none', testPush: false });
  });
  it('row 3: new account device -> ok, store, start, test push', () => {
    expect(decide(req, allowed, undefined)).toEqual({ status: 'ok', action: 'create', testPush: true });
  });
  it('row 4: same password, forbidden -> forbidden, nothing', () => {
    expect(decide(req, allowed, stored({ forbidden: true, forbiddenReason: 'signal_403' }))).toEqual({ status: 'forbidden', action: 'none', testPush: false });
    expect(decide({ ...req, endpoint: 'https://push.example/up/new' }, allowed, stored({ forbidden: true, forbiddenReason: 'signal_403' })).status).toBe('forbidden');
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
  it('row 7: other password for a forbidden connection -> ok, replace credentials, test push', () => {
    expect(decide({ ...req, password: 'new' }, allowed, stored({ forbidden: true }))).toEqual({ status: 'ok', action: 'replace_credentials', testPush: true });
  });
  it('row 8: other password for a healthy connection -> internal_error, nothing', () => {
    expect(decide({ ...req, password: 'new' }, allowed, stored())).toEqual({ status: 'internal_error', action: 'none', testPush: false });
  });
  it('first match wins: a disallowed uuid is refused even with a disallowed endpoint', () => {
    expect(decide(req, { uuidAllowed: false, endpointAllowed: false }, stored()).status).toBe('invalid_uuid');
  });
});

describe('applying a registration', () => {
  function harness(endpoint: ResolvedEndpoint) {
    const store = Store.open(join(tempDir(), 'r.db'));
    const changed: Connection[] = [];
    const pinged: Connection[] = [];
    const registrations = new Registrations(
      store,
      { isUuidAllowed: () => true, checkEndpoint: async () => endpoint, connectionChanged: (c) => changed.push(c), sendTestPush: (c) => pinged.push(c) },
      pino({ level: 'silent' }),
      () => 1234,
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

  it('answers internal_error, with nothing half-written, when the store fails', async () => {
    const h = harness(allowed);
    await h.store.close(); // every query now throws
    expect(await h.registrations.register(req)).toBe('internal_error');
    expect([...h.changed, ...h.pinged]).toEqual([]);
  });
});
