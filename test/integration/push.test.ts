import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RelayEvents } from '../../src/events.js';
import { EndpointPolicy } from '../../src/policy.js';
import type { Resolver } from '../../src/resolver.js';
import { PushClient } from '../../src/push/client.js';
import { Notifier } from '../../src/push/notifier.js';
import { parsePrivateKey, VapidSigner } from '../../src/push/vapid.js';
import type { Connection } from '../../src/store/store.js';
import { ManualClock } from '../fakes/clock.js';
import { FakePushServer } from '../fakes/push-server.js';
import { eventually, flushPromises, memoryLogger } from '../helpers/index.js';

const signer = new VapidSigner(parsePrivateKey('DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI', 'test'));

/** A resolver that maps names to loopback and counts its lookups. */
function loopbackDns(names: string[]): Resolver & { calls: string[] } {
  const calls: string[] = [];
  const resolve = async (host: string) => {
    calls.push(host);
    if (!names.includes(host)) throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
    return [{ address: '127.0.0.1', family: 4 as const }];
  };
  return Object.assign(resolve, { calls });
}

describe('push client against a push server', () => {
  let push: FakePushServer;
  let other: FakePushServer;
  let client: PushClient;

  beforeEach(async () => {
    push = await FakePushServer.start();
    other = await FakePushServer.start();
    client = new PushClient({
      policy: new EndpointPolicy([push.origin, other.origin]),
      authorization: (e) => signer.header(e),
      timeoutMs: 300,
    });
  });

  afterEach(async () => {
    client.close();
    await push.close();
    await other.close();
  });

  it('delivers after 503 three times, retried with backoff, every request signed', async () => {
    push.script.push({ status: 503 }, { status: 503 }, { status: 503 });
    const clock = new ManualClock();
    const conn = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 1, endpoint: push.endpoint() } as Connection;
    // The notifier handles an answer in the promise callbacks queued after this wrapper's.
    let answers = 0;
    const counting = { send: (...args: Parameters<PushClient['send']>) => client.send(...args).finally(() => answers++) };
    const notifier = new Notifier(
      { minIntervalMs: 1_000, retry: { baseMs: 1_000, capMs: 60_000 }, giveUpAfterMs: 3600_000 },
      { client: counting, log: memoryLogger().log, clock, random: () => 1, events: new RelayEvents(), isActive: () => true },
    );
    notifier.urgent(conn);
    for (const [n, delay] of [
      [1, 1_000],
      [2, 2_000],
      [3, 4_000],
    ] as const) {
      await eventually(() => answers === n, `answer ${n}`);
      await flushPromises();
      expect(clock.nextDue()).toBe(delay); // the retry, scheduled on the notifier's clock
      clock.advance(delay);
    }
    await eventually(() => answers === 4, 'the delivered answer');
    await flushPromises();
    expect(clock.nextDue()).toBeUndefined(); // delivered: no retry left, so nothing can be sent again
    expect(push.requests).toHaveLength(4);
    expect(push.requests.every((r) => r.body === '{"urgent":true}' && r.vapid.ok)).toBe(true);
  });

  it('classifies answers: 201, 200, 410, 404, 429 with Retry-After in seconds or as a date, 403, 500', async () => {
    const date = new Date(Date.now() + 60_000).toUTCString();
    push.script.push(
      { status: 201 },
      { status: 200 },
      { status: 410 },
      { status: 404 },
      { status: 429, headers: { 'Retry-After': '120' } },
      { status: 429, headers: { 'Retry-After': date } },
      { status: 403 },
      { status: 500 },
    );
    const outcomes = [];
    for (let i = 0; i < 8; i++) outcomes.push(await client.send(push.endpoint(), 'urgent'));
    expect(outcomes.slice(0, 5)).toEqual([
      { kind: 'delivered', status: 201 },
      { kind: 'delivered', status: 200 },
      { kind: 'gone', status: 410 },
      { kind: 'gone', status: 404 },
      { kind: 'rate_limited', status: 429, retryAfterMs: 120_000 },
    ]);
    expect(outcomes[5]).toMatchObject({ kind: 'rate_limited' });
    const ms = (outcomes[5] as { retryAfterMs: number }).retryAfterMs;
    expect(ms).toBeGreaterThan(55_000);
    expect(ms).toBeLessThanOrEqual(60_000);
    expect(outcomes[6]).toEqual({ kind: 'rejected', status: 403 });
    expect(outcomes[7]).toEqual({ kind: 'failed', status: 500 });
  });

  it('gives up on a hanging server at the timeout, as a failure worth retrying', async () => {
    push.script.push({ hang: true });
    const outcome = await client.send(push.endpoint(), 'urgent');
    expect(outcome).toMatchObject({ kind: 'failed', error: expect.stringMatching(/no answer within 300 ms/) });
  });

  it('never follows a redirect', async () => {
    push.script.push({ status: 307, headers: { Location: other.endpoint('elsewhere') } });
    // A followed redirect would be part of the same send, answered by the other server.
    expect(await client.send(push.endpoint(), 'urgent')).toEqual({ kind: 'rejected', status: 307 });
    expect(other.requests).toHaveLength(0);
  });

  it('reads at most a bounded answer, and closes the connection of an answer that never ends', async () => {
    push.script.push({ status: 201, endless: true });
    expect(await client.send(push.endpoint(), 'urgent')).toEqual({ kind: 'delivered', status: 201 });
    await push.until(() => push.openConnections === 0, 'the endless answer closed by the client');
  });

  it('closes idle kept-alive sockets of many origins after the idle timeout', async () => {
    const port = new URL(push.origin).port;
    const names = Array.from({ length: 40 }, (_, i) => `o${i}.test`);
    const many = new PushClient({
      policy: new EndpointPolicy(
        names.map((n) => `http://${n}:${port}`),
        loopbackDns(names),
      ),
      timeoutMs: 1_000,
      idleSocketMs: 200,
    });
    try {
      // How many are still open when the loop ends depends on the machine's speed (the first may have idled out
      // already); what counts is that every kept-alive socket closes without another push.
      for (const n of names) expect((await many.send(`http://${n}:${port}/up/x`, 'urgent')).kind).toBe('delivered');
      await push.until(() => push.openConnections === 0, 'every idle socket closed');
    } finally {
      many.close();
    }
  });

  it('bounds the pushes under way to one origin, queueing the rest', async () => {
    const bounded = new PushClient({ policy: new EndpointPolicy([push.origin]), timeoutMs: 5_000, maxPerOrigin: 2 });
    push.script.push({ hang: true }, { hang: true }, { hang: true }, { hang: true }, { hang: true });
    const sends = Array.from({ length: 5 }, () => bounded.send(push.endpoint(), 'urgent'));
    await push.until(() => push.requests.length === 2, 'two pushes under way');
    expect(bounded.load()).toEqual({ inFlight: 2, queued: 3 }); // the other three not even started
    expect(push.requests).toHaveLength(2);
    bounded.close(); // the hanging pushes fail, the queued ones then go out
    await push.close();
    for (const outcome of await Promise.all(sends)) expect(outcome.kind).toBe('failed');
    push = await FakePushServer.start();
  });

  it('keeps one connection alive per origin', async () => {
    await client.send(push.endpoint(), 'urgent');
    await client.send(push.endpoint(), 'test');
    expect(push.requests).toHaveLength(2);
    expect(push.requests[0]!.remotePort).toBe(push.requests[1]!.remotePort);
  });

  it('connects to the address it checked, resolving once per push', async () => {
    const port = new URL(push.origin).port;
    const dns = loopbackDns(['push.test']);
    const pinned = new PushClient({ policy: new EndpointPolicy([`http://push.test:${port}`], dns), timeoutMs: 1_000 });
    try {
      expect(await pinned.send(`http://push.test:${port}/up/abc`, 'urgent')).toEqual({ kind: 'delivered', status: 201 });
      expect(await pinned.send(`http://push.test:${port}/up/abc`, 'urgent')).toEqual({ kind: 'delivered', status: 201 });
      expect(dns.calls).toEqual(['push.test', 'push.test']);
      expect(push.requests[0]!.headers.host).toBe(`push.test:${port}`);
    } finally {
      pinned.close();
    }
  });

  it('refuses at push time a "*" endpoint whose name now resolves to loopback, sending nothing', async () => {
    const port = new URL(push.origin).port;
    const rebinding = new PushClient({ policy: new EndpointPolicy(['*'], loopbackDns(['rebind.test'])), timeoutMs: 1_000 });
    try {
      const outcome = await rebinding.send(`http://rebind.test:${port}/up/abc`, 'urgent');
      // Refused before any connection: the outcome is final, nothing of this push is on its way.
      expect(outcome).toMatchObject({ kind: 'rejected', reason: expect.stringMatching(/not globally routable/) });
      expect(push.requests).toHaveLength(0);
    } finally {
      rebinding.close();
    }
  });

  it('treats a DNS failure as worth retrying', async () => {
    const unresolvable = new PushClient({ policy: new EndpointPolicy(['*'], loopbackDns([])), timeoutMs: 1_000 });
    expect(await unresolvable.send('https://nowhere.test/up', 'urgent')).toMatchObject({ kind: 'failed', error: expect.stringMatching(/ENOTFOUND/) });
    unresolvable.close();
  });
});
