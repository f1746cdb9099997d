import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { memoryLogger, tempDir } from '../helpers/index.js';

/** A flood of made-up credentials, as a stranger on the internet sends it, against a real user. */
describe('a registration flood', () => {
  let signal: FakeSignalServer;
  let push: FakePushServer;
  let server: RunningServer;
  const real: Account = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 2, password: 'cmVhbC11c2VyLXBhc3N3b3Jk' };

  beforeEach(async () => {
    signal = await FakeSignalServer.start({ tls: false });
    push = await FakePushServer.start();
    signal.addAccount(real);
    const { config } = loadConfig({
      env: {
        XDG_CONFIG_HOME: '/nonexistent',
        MOLLY_PORT: '0',
        MOLLY_DB: join(tempDir(), 'mollysocket.db'),
        MOLLY_SIGNAL_URL: signal.url,
        MOLLY_ALLOWED_ENDPOINTS: JSON.stringify([push.origin]),
        MOLLY_TRUST_PROXY: 'true', // the test plays clients at several addresses through X-Forwarded-For
        MOLLY_REGISTRATION_RATE_LIMIT: '0',
      },
    });
    server = await startServer(config, memoryLogger().log);
  });

  afterEach(async () => {
    await server.close();
    await signal.close();
    await push.close();
  });

  const register = async (from: string, body: { uuid: string; device_id: number; password: string; endpoint: string }): Promise<string> => {
    const res = await fetch(`${server.url}/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Forwarded-For': from },
      body: JSON.stringify(body),
    });
    return ((await res.json()) as { mollysocket: { status: string } }).mollysocket.status;
  };
  const stranger = (i: number) => ({
    uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
    device_id: 1,
    password: 'bWFkZS11cA==',
    endpoint: push.endpoint(`s${i}`),
  });
  const logins = (uuid: string) => signal.upgrades.filter((u) => u.uuid === uuid).length;

  it('stores nothing and sends nothing for made-up credentials: one refused login each, then none for an account that keeps failing', async () => {
    const victim = stranger(1);
    const answers = [];
    for (let device = 1; device <= 8; device++) answers.push(await register('203.0.113.9', { ...victim, device_id: device }));
    expect(answers).toEqual(Array(8).fill('forbidden'));
    expect(logins(victim.uuid)).toBe(5); // then a cool-down: Signal is not asked about that account for an hour
    expect(await server.store.list()).toEqual([]);
    expect(server.supervisor.counts().total).toBe(0);
    expect(push.requests).toEqual([]);
  });

  it('does not starve a real user: one address gets two questions at once, another address is served', async () => {
    signal.refusals.push({ status: 0 }, { status: 0 }); // the flood's first two questions hang until their timeout
    const flood = Array.from({ length: 20 }, (_, i) => register('203.0.113.9', stranger(100 + i)));
    await signal.until(() => signal.upgrades.length === 2, "the flood's two questions");
    const user = await register('198.51.100.7', { uuid: real.uuid, device_id: real.deviceId, password: real.password, endpoint: push.endpoint('real') });
    expect(user).toBe('ok');
    await push.until(() => push.requests.some((r) => r.path === '/up/real'), 'the real user gets the test push');
    expect(await server.store.list()).toEqual([expect.objectContaining({ uuid: real.uuid, deviceId: real.deviceId })]);
    const answers = await Promise.all(flood);
    expect(answers).toEqual(Array(20).fill('internal_error')); // 18 at once (no place free), 2 when Signal did not answer
    expect(signal.upgrades.filter((u) => u.uuid?.startsWith('00000000-')).length).toBe(2); // two logins for twenty made-up accounts
  }, 30_000);
});
