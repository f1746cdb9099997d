import { rmSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { eventually, memoryLogger, tempDir } from '../helpers/index.js';

const account = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 2, password: 'cGFzc3dvcmQrL3Bhc3N3b3Jk' };

describe('the relay end to end', () => {
  let signal: FakeSignalServer;
  let push: FakePushServer;
  let server: RunningServer;
  let logs: () => string[];

  beforeEach(async () => {
    signal = await FakeSignalServer.start({ tls: true });
    push = await FakePushServer.start();
    signal.addAccount(account);
    const { config } = loadConfig({
      env: {
        XDG_CONFIG_HOME: '/nonexistent',
        MOLLY_PORT: '0',
        MOLLY_DB: join(tempDir(), 'mollysocket.db'),
        MOLLY_SIGNAL_URL: signal.url,
        MOLLY_SIGNAL_CA_FILE: testPki().caFile,
        MOLLY_ALLOWED_ENDPOINTS: JSON.stringify([push.origin]),
      },
    });
    const memory = memoryLogger();
    logs = memory.lines;
    // The store is polled often, so that a removal (by the CLI) is followed before a push's first retry (0.5 to 1 s).
    server = await startServer(config, memory.log, { tune: (o) => ({ ...o, backoff: { baseMs: 20, capMs: 100 }, storePollMs: 50 }) });
  });

  afterEach(async () => {
    await server.close();
    await signal.close();
    await push.close();
  });

  const register = async (body: Record<string, unknown>) => {
    const res = await fetch(`${server.url}/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json; charset=utf-8', 'User-Agent': 'Signal-Android/7.0 Molly' },
      body: JSON.stringify(body),
    });
    return { http: res.status, json: (await res.json()) as { mollysocket: { version: string; status: string } } };
  };
  const molly = { uuid: account.uuid, device_id: account.deviceId, password: account.password };
  /** A connection stored while Signal accepted it, then unlinked: Signal answers its reconnection with 403. */
  const unlinked = async (endpoint: string) => {
    expect((await register({ ...molly, endpoint })).json.mollysocket.status).toBe('ok');
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected');
    signal.removeAccount(account);
    signal.open(account.uuid, account.deviceId)[0]!.ws.close(4401, 'Reauthenticate');
    await signal.until(() => server.supervisor.state(account) === 'forbidden', 'forbidden');
  };

  it('registers, connects with Basic credentials, and turns every urgent envelope into a signed push', async () => {
    const endpoint = push.endpoint('token-1');
    const res = await register({ ...molly, endpoint });
    expect(res).toEqual({ http: 200, json: { mollysocket: { version: expect.any(String), status: 'ok' } } });

    await signal.until(() => signal.open(account.uuid, 2).length === 1, 'a session');
    const session = signal.open(account.uuid, 2)[0]!;
    const basic = Buffer.from(`${account.uuid}.2:${account.password}`).toString('base64');
    // Beyond the websocket handshake's own headers, exactly what MollySocket 1.7.1 sends (the default user_agent,
    // "OWA" with its quotes); no X-Signal-Receive-Stories, no permessage-deflate.
    const { host: _h, connection: _c, upgrade: _u, 'sec-websocket-key': _k, 'sec-websocket-version': _v, ...sent } = session.headers;
    expect(sent).toEqual({ authorization: `Basic ${basic}`, 'user-agent': 'Signal-Android/8.3.4 Android/36', 'x-signal-agent': '"OWA"' });

    // The registration's test push.
    await push.until(() => push.requests.length === 1, 'the test push');
    expect(push.requests[0]).toMatchObject({ method: 'POST', path: '/up/token-1', body: '{"test":true}' });
    expect(push.requests[0]!.headers.topic).toBe('test');
    expect(push.requests[0]!.vapid).toMatchObject({ ok: true, publicKey: server.vapidPublicKey });

    // An urgent envelope (urgent absent means urgent) is acked and pushed.
    expect(await signal.sendEnvelope(session)).toEqual({ status: 200, message: 'OK' });
    await push.until(() => push.requests.length === 2, 'the urgent push');
    const wake = push.requests[1]!;
    expect(wake.body).toBe('{"urgent":true}');
    expect(wake.headers).toMatchObject({
      'content-type': 'application/json',
      ttl: '2592000',
      urgency: 'high',
      topic: 'mollysocket',
      'content-encoding': 'aes128gcm',
    });
    expect(wake.vapid).toMatchObject({ ok: true, publicKey: server.vapidPublicKey, claims: { aud: push.origin } });

    // Non-urgent envelopes are acked but never pushed; queue/empty is acked; unknown requests get 400.
    expect(await signal.sendEnvelope(session, { urgent: false })).toEqual({ status: 200, message: 'OK' });
    expect(await signal.request(session, 'PUT', '/api/v1/queue/empty')).toEqual({ status: 200, message: 'OK' });
    expect((await signal.request(session, 'GET', '/v1/unknown')).status).toBe(400);
    expect(await signal.sendEnvelope(session, { urgent: true })).toEqual({ status: 200, message: 'OK' });
    await push.until(() => push.requests.length === 3, 'the second urgent push');
    expect(push.bodies()).toEqual(['{"test":true}', '{"urgent":true}', '{"urgent":true}']);

    // Nothing secret reached the log.
    const log = logs().join('');
    expect(log).not.toContain(account.password);
    expect(log).not.toContain('token-1');
    expect(log).not.toContain(account.uuid);
  });

  it('treats an identical re-registration as a no-op, and pings only when asked', async () => {
    const endpoint = push.endpoint();
    await register({ ...molly, endpoint });
    await signal.until(() => signal.open(account.uuid, 2).length === 1, 'a session');
    await push.until(() => push.requests.length === 1, 'the test push');

    expect((await register({ ...molly, endpoint })).json.mollysocket.status).toBe('ok');
    expect((await register({ ...molly, endpoint, ping: true })).json.mollysocket.status).toBe('ok');
    await push.until(() => push.requests.length === 2, 'the ping');
    expect(push.bodies()).toEqual(['{"test":true}', '{"test":true}']);
    expect(signal.sessions).toHaveLength(2); // the question to Signal at the first registration, and the connection
    expect(signal.open(account.uuid, 2)).toHaveLength(1);
  });

  it('answers Molly with the status strings of the decision table', async () => {
    expect((await register({ ...molly, endpoint: 'https://elsewhere.example/up' })).json.mollysocket.status).toBe('invalid_endpoint');
    expect((await register({ ...molly, uuid: 'nope', endpoint: push.endpoint() })).json.mollysocket.status).toBe('invalid_uuid');
    expect((await register({ ...molly, endpoint: push.endpoint() })).json.mollysocket.status).toBe('ok');
    expect((await register({ ...molly, password: 'other', endpoint: push.endpoint() })).json.mollysocket.status).toBe('internal_error');
  });

  describe('credentials that would change what an account has are stored only once Signal accepted them', () => {
    const device3 = { uuid: account.uuid, deviceId: 3, password: 'ZGV2aWNlMy1wYXNzd29yZA==' };
    const healthy = async () => {
      await register({ ...molly, endpoint: push.endpoint('device2') });
      await signal.until(() => server.supervisor.state(account) === 'connected', 'device 2 connected');
      await push.until(() => push.requests.length === 1, 'the test push of device 2');
    };

    it('a new device of an account with a healthy connection: refused by Signal -> forbidden, nothing stored, no push', async () => {
      await healthy();
      const before = signal.upgrades.length;
      const stranger = await register({ uuid: account.uuid, device_id: 3, password: 'Z3Vlc3NlZA==', endpoint: push.endpoint('stranger') });
      expect(stranger.json.mollysocket.status).toBe('forbidden');
      expect(signal.upgrades.slice(before)).toEqual([{ uuid: account.uuid, status: 403 }]); // one question, nothing more
      expect((await server.store.list()).map((c) => c.deviceId)).toEqual([2]);
      await new Promise((r) => setTimeout(r, 100));
      expect(push.requests.map((r) => r.path)).toEqual(['/up/device2']);
      expect(signal.upgrades.length).toBe(before + 1); // no connection attempts with the refused password
    });

    it('a new device of an account with a healthy connection: accepted by Signal -> ok, stored, connected, test push', async () => {
      await healthy();
      signal.addAccount(device3);
      signal.queue(device3, 2); // messages Signal holds for the new device
      const relinked = await register({ uuid: account.uuid, device_id: 3, password: device3.password, endpoint: push.endpoint('device3') });
      expect(relinked.json.mollysocket.status).toBe('ok');
      // The question is a socket closed at once, acknowledging nothing; then the connection itself, which gets
      // what Signal queued and wakes the phone.
      await signal.until(() => server.supervisor.state(device3) === 'connected', 'device 3 connected');
      const sessions = signal.sessions.filter((x) => x.account.deviceId === 3);
      expect(sessions).toHaveLength(2);
      expect(sessions[0]!.ws.readyState).not.toBe(sessions[0]!.ws.OPEN);
      expect(signal.events).toContain(`close ${account.uuid}.3 1000`);
      await signal.until(() => signal.queued.get(`${account.uuid}.3`) === 0, 'the queued envelopes acknowledged');
      expect(sessions.map((x) => x.acked)).toEqual([0, 2]);
      expect(await server.store.get(device3)).toMatchObject({ password: device3.password, forbidden: false });
      await push.until(() => push.requests.some((r) => r.path === '/up/device3' && r.body === '{"urgent":true}'), 'a wake-up for device 3');
      expect(push.requests.some((r) => r.path === '/up/device3' && r.body === '{"test":true}')).toBe(true);
      expect(server.supervisor.state(account)).toBe('connected'); // device 2 is untouched
      expect(logs().join('')).toMatch(/"verdict":"accepted".*"msg":"new credentials checked with Signal"/);
    });

    it('a new device while Signal cannot be asked -> internal_error (Molly tries again later), nothing stored', async () => {
      await healthy();
      signal.addAccount(device3);
      signal.refusals.push({ status: 503 });
      const res = await register({ uuid: account.uuid, device_id: 3, password: device3.password, endpoint: push.endpoint('device3') });
      expect(res.json.mollysocket.status).toBe('internal_error');
      expect(await server.store.get(device3)).toBeUndefined();
      // Asked again when Signal answers: ok.
      expect(
        (await register({ uuid: account.uuid, device_id: 3, password: device3.password, endpoint: push.endpoint('device3') })).json.mollysocket.status,
      ).toBe('ok');
    });

    it('a new password for a forbidden connection (MollySocket row 7): replaced only when Signal accepts it', async () => {
      await unlinked(push.endpoint('victim'));
      const stranger = await register({ ...molly, password: 'c3RyYW5nZXI=', endpoint: push.endpoint('stranger') });
      expect(stranger.json.mollysocket.status).toBe('forbidden');
      expect(await server.store.get(account)).toMatchObject({ password: account.password, endpoint: push.endpoint('victim'), forbidden: true });
      expect(push.requests.some((r) => r.path === '/up/stranger')).toBe(false);

      const relinked = { ...account, password: 'cmUtbGlua2VkLXBhc3N3b3Jk' };
      signal.addAccount(relinked);
      expect((await register({ ...molly, password: relinked.password, endpoint: push.endpoint('relinked') })).json.mollysocket.status).toBe('ok');
      expect(await server.store.get(account)).toMatchObject({ password: relinked.password, endpoint: push.endpoint('relinked'), forbidden: false });
      await signal.until(() => server.supervisor.state(account) === 'connected', 'connected again');
    });

    it("Molly's routine re-registration never asks Signal", async () => {
      await healthy();
      const before = signal.upgrades.length;
      expect((await register({ ...molly, endpoint: push.endpoint('device2') })).json.mollysocket.status).toBe('ok');
      expect(signal.upgrades.length).toBe(before);
    });
  });

  it('stores nothing and pushes nothing for a new account device that Signal refuses: forbidden', async () => {
    signal.removeAccount(account);
    expect((await register({ ...molly, endpoint: push.endpoint() })).json.mollysocket.status).toBe('forbidden');
    expect(signal.upgrades).toEqual([{ uuid: account.uuid, status: 403 }]); // the question, and no connection
    expect(await server.store.list()).toEqual([]);
    expect(server.supervisor.counts().total).toBe(0);
    expect(push.requests).toEqual([]);
  });

  it('marks the connection forbidden when Signal answers 403, and stops trying', async () => {
    await unlinked(push.endpoint());
    expect(signal.upgrades.at(-1)).toEqual({ uuid: account.uuid, status: 403 });
    expect(await server.store.get(account)).toMatchObject({ forbidden: true, forbiddenReason: 'signal_403' });
    expect((await register({ ...molly, endpoint: push.endpoint() })).json.mollysocket.status).toBe('forbidden');
    const attempts = signal.upgrades.length;
    await new Promise((r) => setTimeout(r, 300)); // several backoff periods of this test's 20-100 ms
    expect(signal.upgrades.length).toBe(attempts);
  });

  it('keeps running when a store write throws: the connection is stopped at once, the write retried, /health tells', async () => {
    const second = { uuid: '00000000-0000-4000-8000-0000000000b2', deviceId: 1, password: 'c2Vjb25k' };
    signal.addAccount(second);
    await register({ ...molly, endpoint: push.endpoint('gone') });
    await register({ uuid: second.uuid, device_id: 1, password: second.password, endpoint: push.endpoint('other') });
    await signal.until(() => signal.open(account.uuid, 2).length === 1 && signal.open(second.uuid, 1).length === 1, 'both connected');
    await push.until(() => push.requests.length === 2, 'the test pushes');

    const setForbidden = server.store.setForbidden.bind(server.store);
    server.store.setForbidden = () => {
      throw Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY' });
    };
    push.script.push({ status: 410 }); // the wake-up finds the endpoint gone: the connection must be forbidden
    await signal.sendEnvelope(signal.open(account.uuid, 2)[0]!);
    await signal.until(() => signal.open(account.uuid, 2).length === 0, 'the gone connection closed');
    expect(server.supervisor.state(account)).toBe('forbidden');
    expect((await fetch(`${server.url}/health`)).status).toBe(503);

    // Every other connection goes on.
    await signal.sendEnvelope(signal.open(second.uuid, 1)[0]!);
    await push.until(() => push.requests.some((r) => r.path === '/up/other' && r.body === '{"urgent":true}'), 'the other wake-up');

    server.store.setForbidden = setForbidden; // the store takes writes again: the queued write lands
    await eventually(async () => (await server.store.get(account))?.forbidden === true, 'the forbid written', 10_000);
    expect(await server.store.get(account)).toMatchObject({ forbiddenReason: 'endpoint_gone' });
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    expect(logs().join('')).toMatch(/"code":"SQLITE_BUSY".*a store write failed: kept and retried/);
  });

  it('shows pushes under way and the connect queue as gauges', async () => {
    await register({ ...molly, endpoint: push.endpoint('slow') });
    await signal.until(() => signal.open(account.uuid, 2).length === 1, 'connected');
    await push.until(() => push.requests.length === 1, 'the test push');
    push.script.push({ hang: true });
    await signal.sendEnvelope(signal.open(account.uuid, 2)[0]!);
    await push.until(() => push.requests.length === 2, 'the hanging wake-up');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toContain('\nmollysocket_pushes_in_flight 1\n');
    expect(metrics).toContain('\nmollysocket_pushes_queued 0\n');
    expect(metrics).toContain('\nmollysocket_connect_queue 0\n');
  });

  it('reconnects when the server closes the socket', async () => {
    await register({ ...molly, endpoint: push.endpoint() });
    await signal.until(() => signal.open(account.uuid, 2).length === 1, 'a session');
    signal.open(account.uuid, 2)[0]!.ws.close(1011, 'server restart');
    await signal.until(() => signal.sessions.length === 3 && signal.open(account.uuid, 2).length === 1, 'a second session');
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected state');
    expect(signal.upgrades.filter((u) => u.status === 101)).toHaveLength(3); // the question, the connection, the reconnection
  });

  it('4409: sends a delivery check, and a 410 answer disables the connection until Molly registers a new endpoint', async () => {
    await register({ ...molly, endpoint: push.endpoint('old') });
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected');
    await push.until(() => push.requests.length === 1, 'the test push');

    push.script.push({ status: 410 }); // the distributor unregistered the endpoint
    const basic = Buffer.from(`${account.uuid}.${account.deviceId}:${account.password}`).toString('base64');
    const other = new WebSocket(signal.url, { headers: { Authorization: `Basic ${basic}` }, ca: testPki().ca });
    await push.until(() => push.requests.length === 2, 'the delivery check');
    expect(push.requests[1]).toMatchObject({ body: '{"code":4409}', headers: expect.objectContaining({ topic: '4409' }) });
    await signal.until(() => server.supervisor.state(account) === 'forbidden', 'forbidden');
    expect(await server.store.get(account)).toMatchObject({ forbidden: true, forbiddenReason: 'endpoint_gone' });
    other.close();

    expect((await register({ ...molly, endpoint: push.endpoint('new') })).json.mollysocket.status).toBe('ok');
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected again');
    await push.until(() => push.requests.length === 3, 'the new test push');
    expect(push.requests[2]).toMatchObject({ path: '/up/new', body: '{"test":true}' });
  });

  it('a late 410 from the old endpoint after Molly registered a new one disables nothing; the push goes to the new one', async () => {
    await register({ ...molly, endpoint: push.endpoint('old') });
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected');
    await push.until(() => push.requests.length === 1, 'the test push');

    let answerLate!: () => void;
    push.script.push({ status: 410, after: new Promise<void>((r) => (answerLate = r)) });
    await signal.sendEnvelope(signal.open(account.uuid, 2)[0]!);
    await push.until(() => push.requests.length === 2, 'the urgent push to the old endpoint');
    expect((await register({ ...molly, endpoint: push.endpoint('new') })).json.mollysocket.status).toBe('ok');
    answerLate(); // the old endpoint was unregistered meanwhile
    await push.until(() => push.requests.some((r) => r.path === '/up/new' && r.body === '{"urgent":true}'), 'the push to the new endpoint');
    await new Promise((r) => setTimeout(r, 100));

    expect(await server.store.get(account)).toMatchObject({ forbidden: false, endpoint: push.endpoint('new') });
    expect(server.supervisor.state(account)).toBe('connected');
    expect((await register({ ...molly, endpoint: push.endpoint('new') })).json.mollysocket.status).toBe('ok');
  });

  it.each([
    [
      'removed (as `mollysocket connection remove` does)',
      async () => {
        const cli = SqliteStore.open(server.store.location);
        await cli.remove({ uuid: account.uuid });
        await cli.close();
        await eventually(() => server.supervisor.state(account) === undefined, 'the server to follow the removal', 400);
      },
    ],
    [
      'forbidden (the device was unlinked: the reconnection is answered 403)',
      async () => {
        signal.removeAccount(account);
        signal.open(account.uuid, 2)[0]!.ws.close(4401);
        await eventually(() => server.supervisor.state(account) === 'forbidden', 'forbidden', 400);
      },
    ],
  ])('sends nothing for a connection %s while its push waits to be retried', async (_how, stop) => {
    await register({ ...molly, endpoint: push.endpoint() });
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected');
    await push.until(() => push.requests.length === 1, 'the test push');
    push.script.push({ status: 503 });
    await signal.sendEnvelope(signal.open(account.uuid, 2)[0]!);
    await push.until(() => push.requests.length === 2, 'the urgent push');
    await stop();
    await new Promise((r) => setTimeout(r, 1_100)); // past the retry's backoff (at most 1 s)
    expect(push.requests).toHaveLength(2);
  });

  it('keeps acking envelopes at once while the push server hangs', async () => {
    await register({ ...molly, endpoint: push.endpoint() });
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected');
    await push.until(() => push.requests.length === 1, 'the test push');
    push.script.push({ hang: true }, { hang: true }, { hang: true }, { hang: true });
    const session = signal.open(account.uuid, 2)[0]!;
    const acks = [];
    for (let i = 0; i < 5; i++) acks.push(await signal.sendEnvelope(session)); // each awaited: no ack waits on a push
    expect(acks.every((a) => a.status === 200)).toBe(true);
    expect(await signal.request(session, 'PUT', '/api/v1/queue/empty')).toEqual({ status: 200, message: 'OK' });
    expect(push.requests.length).toBeGreaterThanOrEqual(2);
    expect(server.supervisor.state(account)).toBe('connected');
  });

  it('refuses at registration an endpoint whose name resolves to loopback under "*"', async () => {
    await server.close();
    const { config } = loadConfig({
      env: {
        XDG_CONFIG_HOME: '/nonexistent',
        MOLLY_PORT: '0',
        MOLLY_DB: join(tempDir(), 'm.db'),
        MOLLY_SIGNAL_URL: signal.url,
        MOLLY_SIGNAL_CA_FILE: testPki().caFile,
      },
    });
    const resolver = async () => [{ address: '127.0.0.1', family: 4 as const }];
    server = await startServer(config, memoryLogger().log, { resolver });
    const port = new URL(push.origin).port;
    expect((await register({ ...molly, endpoint: `http://sneaky.example:${port}/up` })).json.mollysocket.status).toBe('invalid_endpoint');
    expect(await server.store.list()).toEqual([]);
    expect(push.requests).toHaveLength(0);
  });

  it('reports health, and 503 once the database file is gone', async () => {
    const health = async () => {
      const res = await fetch(`${server.url}/health`);
      return { status: res.status, body: (await res.json()) as { status: string; connections: Record<string, number> } };
    };
    await register({ ...molly, endpoint: push.endpoint() });
    await signal.until(() => server.supervisor.state(account) === 'connected', 'connected');
    expect(await health()).toEqual({
      status: 200,
      body: { status: 'ok', version: expect.any(String), connections: { total: 1, connected: 1, connecting: 0, backoff: 0, forbidden: 0 } },
    });
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toContain('\nmollysocket_connections 1\n');
    expect(metrics).toContain('\nmollysocket_pushs 0\n'); // the registration's test push is no wake-up
    expect(metrics).toMatch(/\nrocket_http_requests_total\{endpoint="\/",method="POST",status="200"\} 1\n/);
    const healthText = JSON.stringify((await health()).body);
    for (const secret of [account.uuid, account.uuid.slice(0, 8), account.password, 'up-token']) {
      expect(metrics).not.toContain(secret); // nothing on the public ops endpoints names an account
      expect(healthText).not.toContain(secret);
    }
    rmSync(server.store.location);
    expect((await health()).status).toBe(503);
  });

  it('serves health and metrics only on their own listener when metrics_port is set', async () => {
    await server.close();
    const { config } = loadConfig({
      env: { XDG_CONFIG_HOME: '/nonexistent', MOLLY_PORT: '0', MOLLY_METRICS_PORT: '0', MOLLY_DB: join(tempDir(), 'm.db'), MOLLY_SIGNAL_URL: signal.url },
    });
    server = await startServer(config, memoryLogger().log);
    expect(server.opsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect((await fetch(`${server.opsUrl}/health`)).status).toBe(200);
    expect(await (await fetch(`${server.opsUrl}/metrics`)).text()).toContain('mollysocket_messages');
    expect((await fetch(`${server.url}/health`)).status).toBe(404);
    expect((await fetch(`${server.url}/metrics`)).status).toBe(404);
  });
});
