import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { askSignal } from '../../src/signal/link.js';
import { ManualClock } from '../fakes/clock.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { memoryLogger } from '../helpers/index.js';

const A: Account = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 3, password: 'cmUtbGlua2Vk' };

describe('asking Signal whether it accepts credentials', () => {
  let signal: FakeSignalServer;
  const clock = new ManualClock();
  const ask = (creds: Account, url = signal.url, ca?: Buffer[]) =>
    askSignal(creds, {
      url,
      ca,
      userAgent: 'Signal-Android/8.3.4 Android/36',
      connectTimeoutMs: 5_000,
      keepaliveIntervalMs: 30_000,
      keepaliveTimeoutMs: 20_000,
      clock,
      log: memoryLogger().log,
    });

  afterEach(async () => {
    await signal.close();
  });

  it('accepted: one upgrade answered 101, closed at once with 1000', async () => {
    signal = await FakeSignalServer.start({ tls: false });
    signal.addAccount(A);
    expect(await ask(A)).toBe('accepted');
    await signal.until(() => signal.events.length === 2, 'the socket closed');
    expect(signal.events).toEqual([`open ${A.uuid}.3`, `close ${A.uuid}.3 1000`]);
    expect(signal.sessions[0]!.headers['x-signal-agent']).toBe('"OWA"'); // as every socket of MollySocket 1.7.1
  });

  it('refused: 403', async () => {
    signal = await FakeSignalServer.start({ tls: false });
    expect(await ask(A)).toBe('refused');
    expect(signal.upgrades).toEqual([{ uuid: A.uuid, status: 403 }]);
  });

  it('over TLS, trusts exactly the configured certificates (one context shared by every socket)', async () => {
    signal = await FakeSignalServer.start({ tls: true });
    signal.addAccount(A);
    const testCa = [Buffer.from(testPki().ca)];
    expect(await ask(A, signal.url, testCa)).toBe('accepted');
    expect(await ask(A, signal.url, testCa)).toBe('accepted'); // the second socket reuses the context
    const signalRoots = ['signal.pem', 'signal-ed25519.pem'].map((f) => readFileSync(join(packageRoot, 'certs', f)));
    expect(await ask(A, signal.url, signalRoots)).toBe('unreachable'); // the test CA is not among Signal's roots
    expect(signal.sessions).toHaveLength(2);
  });

  it('unreachable: another answer, no answer within the timeout, or no server at all', async () => {
    signal = await FakeSignalServer.start({ tls: false });
    signal.addAccount(A);
    signal.refusals.push({ status: 429 });
    expect(await ask(A)).toBe('unreachable');

    signal.refusals.push({ status: 0 }); // the upgrade is never answered
    const hanging = ask(A);
    await signal.until(() => signal.upgrades.length === 2, 'the hanging upgrade');
    clock.advance(5_000);
    expect(await hanging).toBe('unreachable');

    const closed = await FakeSignalServer.start({ tls: false });
    const url = closed.url;
    await closed.close();
    expect(await ask(A, url)).toBe('unreachable');
  });
});
