import { describe, expect, it } from 'vitest';
import { RelayEvents } from '../../src/events.js';
import { Metrics } from '../../src/metrics.js';
import type { PushKind, PushOutcome } from '../../src/push/client.js';
import { Notifier, type NotifierOptions } from '../../src/push/notifier.js';
import type { PushTarget } from '../../src/push/notifier.js';
import type { Connection } from '../../src/store/store.js';
import { ManualClock } from '../fakes/clock.js';
import { flushPromises, memoryLogger } from '../helpers/index.js';

const conn: Connection = {
  uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e',
  deviceId: 1,
  password: 'pw',
  endpoint: 'https://push.example/up/token',
  forbidden: false,
  forbiddenReason: null,
  forbiddenAt: null,
  lastRegistration: 0,
  createdAt: 0,
  updatedAt: 0,
  owner: null,
  epoch: 0,
};

interface Sent {
  at: number;
  kind: PushKind;
  endpoint: string;
  aborted: () => boolean;
  answer: (o: PushOutcome) => void;
}

/** A push client whose answers the test gives, one by one or all at once. */
function harness(opts: Partial<NotifierOptions> = {}, autoAnswer?: (n: number) => PushOutcome) {
  const clock = new ManualClock(0);
  const sent: Sent[] = [];
  const gone: PushTarget[] = [];
  let active = true;
  const { log, lines } = memoryLogger();
  const metrics = new Metrics();
  const client = {
    send: (endpoint: string, kind: PushKind, signal?: AbortSignal) =>
      new Promise<PushOutcome>((resolve) => {
        const s: Sent = { at: clock.now(), kind, endpoint, aborted: () => signal?.aborted ?? false, answer: resolve };
        sent.push(s);
        if (autoAnswer) resolve(autoAnswer(sent.length - 1));
      }),
  };
  const events = new RelayEvents();
  events.on('gone', (c) => gone.push(c));
  const notifier = new Notifier(
    { minIntervalMs: 1_000, retry: { baseMs: 1_000, capMs: 300_000 }, giveUpAfterMs: 24 * 3600_000, ...opts },
    { client, log, metrics, clock, random: () => 1, events, isActive: () => active },
  );
  return { clock, sent, gone, notifier, lines, metrics, deactivate: () => (active = false) };
}

const delivered: PushOutcome = { kind: 'delivered', status: 201 };
const failed503: PushOutcome = { kind: 'failed', status: 503 };

describe('coalescing', () => {
  it('pushes the first urgent envelope at once and collapses a burst into one trailing push', async () => {
    const h = harness({}, () => delivered);
    for (const t of [0, 100, 200, 900]) {
      h.clock.advance(t - h.clock.now());
      h.notifier.urgent(conn);
    }
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0]);
    h.clock.advance(100); // t = 1000: the interval is over
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 1000]);
    h.clock.advance(500);
    h.notifier.urgent(conn); // t = 1500, within a second of the trailing push
    h.clock.advance(500);
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 1000, 2000]);
    h.clock.advance(1500);
    h.notifier.urgent(conn); // t = 3500, quiet before: at once
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 1000, 2000, 3500]);
    expect(h.sent.every((s) => s.kind === 'urgent')).toBe(true);
  });

  it('always has a push that started after the last envelope, and never two within the interval', async () => {
    let seed = 42;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let run = 0; run < 50; run++) {
      const h = harness({}, () => delivered);
      let last = 0;
      const envelopes = 1 + Math.floor(random() * 30);
      for (let i = 0; i < envelopes; i++) {
        h.clock.advance(Math.floor(random() * 1500));
        last = h.clock.now();
        h.notifier.urgent(conn);
      }
      h.clock.advance(2_000);
      await flushPromises();
      const starts = h.sent.map((s) => s.at);
      expect(starts.at(-1)).toBeGreaterThanOrEqual(last);
      for (let i = 1; i < starts.length; i++) expect(starts[i]! - starts[i - 1]!).toBeGreaterThanOrEqual(1_000);
      expect(starts.length).toBeLessThanOrEqual(envelopes);
    }
  });

  it('does not coalesce when the interval is 0', async () => {
    const h = harness({ minIntervalMs: 0 }, () => delivered);
    h.notifier.urgent(conn);
    h.notifier.urgent(conn);
    await flushPromises();
    expect(h.sent).toHaveLength(2);
  });
});

describe('retries', () => {
  it('retries 5xx, timeouts and network errors with exponential backoff until delivered', async () => {
    const answers: PushOutcome[] = [failed503, { kind: 'failed', error: 'no answer within 10000 ms' }, { kind: 'failed', error: 'ECONNREFUSED' }, delivered];
    const h = harness({}, (n) => answers[n]!);
    h.notifier.urgent(conn);
    for (const step of [1_000, 2_000, 4_000]) {
      await flushPromises();
      h.clock.advance(step);
    }
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 1_000, 3_000, 7_000]);
    h.clock.advance(3600_000);
    await flushPromises();
    expect(h.sent).toHaveLength(4); // delivered: nothing more
    const results = await h.metrics.registry.getSingleMetricAsString('mollysocket_push_results_total');
    expect(results).toMatch(/kind="urgent",outcome="failed"} 3/);
    expect(results).toMatch(/kind="urgent",outcome="delivered"} 1/);
    expect(await h.metrics.registry.getSingleMetricAsString('mollysocket_push_retries_total')).toMatch(/ 3$/m);
    // One wake-up, however many attempts it took: MollySocket's meaning of mollysocket_pushs.
    expect(await h.metrics.registry.getSingleMetricAsString('mollysocket_pushs')).toMatch(/^mollysocket_pushs 1$/m);
  });

  it('stops retrying a push superseded by a newer one, aborting it', async () => {
    const h = harness();
    h.notifier.urgent(conn);
    h.sent[0]!.answer(failed503);
    await flushPromises();
    h.clock.advance(500);
    h.notifier.urgent(conn); // within the interval: trailing at t = 1000, which supersedes the retry due then
    h.clock.advance(500);
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 1_000]);
    h.sent[1]!.answer(delivered);
    h.clock.advance(60_000);
    await flushPromises();
    expect(h.sent).toHaveLength(2);
  });

  it('aborts a hanging push when a newer one starts', async () => {
    const h = harness();
    h.notifier.urgent(conn); // never answered
    h.clock.advance(1_500);
    h.notifier.urgent(conn);
    await flushPromises();
    expect(h.sent).toHaveLength(2);
    expect(h.sent[0]!.aborted()).toBe(true);
    expect(h.sent[1]!.aborted()).toBe(false);
  });

  it("429: waits the server's Retry-After, and holds new pushes of the connection until then", async () => {
    const h = harness();
    h.notifier.urgent(conn);
    h.sent[0]!.answer({ kind: 'rate_limited', status: 429, retryAfterMs: 30_000 });
    await flushPromises();
    h.clock.advance(5_000);
    h.notifier.urgent(conn); // would be allowed by the interval, but the server asked to wait
    h.clock.advance(24_999);
    await flushPromises();
    expect(h.sent).toHaveLength(1);
    h.clock.advance(1);
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 30_000]);
  });

  it('429 without Retry-After backs off', async () => {
    const h = harness({}, (n) => (n === 0 ? { kind: 'rate_limited', status: 429, retryAfterMs: undefined } : delivered));
    h.notifier.urgent(conn);
    await flushPromises();
    h.clock.advance(1_000);
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 1_000]);
  });

  it('gives up after the horizon, with a warning', async () => {
    const h = harness({ giveUpAfterMs: 10_000 }, () => failed503);
    h.notifier.urgent(conn);
    for (let i = 0; i < 20; i++) {
      await flushPromises();
      h.clock.advance(1_000);
    }
    expect(h.sent.map((s) => s.at)).toEqual([0, 1_000, 3_000, 7_000]); // the next one (15 s) would be past 10 s
    expect(h.lines().join('')).toMatch(/given up/);
  });

  it('404/410: reports the endpoint gone and does not retry', async () => {
    const h = harness({}, () => ({ kind: 'gone', status: 410 }));
    h.notifier.urgent(conn);
    await flushPromises();
    h.clock.advance(60_000);
    await flushPromises();
    expect(h.sent).toHaveLength(1);
    expect(h.gone).toEqual([{ uuid: conn.uuid, deviceId: conn.deviceId, endpoint: conn.endpoint }]); // never the password
  });

  it('403 and other 4xx: logged, not retried, and the connection stays enabled', async () => {
    const h = harness({}, () => ({ kind: 'rejected', status: 403 }));
    h.notifier.urgent(conn);
    await flushPromises();
    h.clock.advance(60_000);
    await flushPromises();
    expect(h.sent).toHaveLength(1);
    expect(h.gone).toEqual([]);
    expect(h.lines().join('')).toMatch(/push refused: not retried/);
    const log = h.lines().join('');
    expect(log).not.toContain('/up/token'); // only the endpoint's origin is logged
  });

  it('logs each failed or refused push at info or warn, and a delivered one only at debug (the summary counts those)', async () => {
    const answers = [failed503, delivered, { kind: 'rejected', status: 403 } as PushOutcome];
    const h = harness({}, (n) => answers[n]!);
    const logged = () => h.lines().map((l) => JSON.parse(l) as { level: number; msg: string });
    h.notifier.urgent(conn);
    await flushPromises();
    expect(
      logged()
        .filter((l) => l.level >= 30)
        .map((l) => [l.level, l.msg]),
    ).toEqual([[30, 'push failed: will retry']]);
    h.clock.advance(2_000); // the retry: delivered
    await flushPromises();
    expect(h.sent).toHaveLength(2);
    expect(
      logged()
        .filter((l) => l.msg === 'push delivered')
        .map((l) => l.level),
    ).toEqual([20]);
    h.clock.advance(2_000);
    h.notifier.urgent(conn); // refused
    await flushPromises();
    expect(
      logged()
        .filter((l) => l.level >= 30)
        .map((l) => [l.level, l.msg]),
    ).toEqual([
      [30, 'push failed: will retry'],
      [40, 'push refused: not retried (check allowed_endpoints and the VAPID key)'],
    ]);
  });

  it('stops retrying for a connection that went away', async () => {
    const h = harness({}, () => failed503);
    h.notifier.urgent(conn);
    h.deactivate();
    await flushPromises();
    h.clock.advance(60_000);
    await flushPromises();
    expect(h.sent).toHaveLength(1);
  });

  it('test pushes and delivery checks are separate from the urgent lane', async () => {
    const h = harness({}, () => delivered);
    h.notifier.urgent(conn);
    h.notifier.test(conn);
    h.notifier.deliveryCheck(conn);
    await flushPromises();
    expect(h.sent.map((s) => s.kind)).toEqual(['urgent', 'test', 'delivery_check']);
    // mollysocket_pushs counts urgent wake-ups only; every push is in the results by kind.
    expect(await h.metrics.registry.getSingleMetricAsString('mollysocket_pushs')).toMatch(/^mollysocket_pushs 1$/m);
    const results = await h.metrics.registry.getSingleMetricAsString('mollysocket_push_results_total');
    for (const kind of ['urgent', 'test', 'delivery_check']) expect(results).toContain(`kind="${kind}",outcome="delivered"} 1`);
  });

  it('at a hand-over, sends the trailing push owed for envelopes acknowledged here at once, and keeps retrying it', async () => {
    const answers = [delivered, failed503, delivered];
    const h = harness({}, (n) => answers[n]!);
    h.notifier.urgent(conn); // t = 0: pushed at once
    h.clock.advance(100);
    h.notifier.urgent(conn); // within the interval: a trailing push is due at t = 1000
    h.notifier.release(conn); // another instance runs it now; the supervisor here wants no more pushes for it
    h.deactivate();
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 100]); // not dropped, and not left waiting for the interval
    h.clock.advance(1_000); // its 503 is retried although the connection is no longer active here
    await flushPromises();
    expect(h.sent.map((s) => s.at)).toEqual([0, 100, 1_100]);
  });

  it('sends a pending trailing push at shutdown instead of dropping it', async () => {
    const h = harness({}, () => delivered);
    h.notifier.urgent(conn);
    h.clock.advance(100);
    h.notifier.urgent(conn);
    await h.notifier.drain(100);
    expect(h.sent.map((s) => s.at)).toEqual([0, 100]);
  });
});

describe('following the store', () => {
  const moved = { ...conn, endpoint: 'https://push.example/up/new' };

  it('sends a pending retry to the new endpoint at once, and drops a test push to the old one', async () => {
    const h = harness();
    h.notifier.urgent(conn);
    h.notifier.test(conn);
    await flushPromises();
    h.sent[0]!.answer(failed503);
    h.sent[1]!.answer(failed503);
    await flushPromises();
    h.notifier.update(moved); // Molly registered a new endpoint
    await flushPromises();
    expect(h.sent.map((s) => [s.kind, s.endpoint])).toEqual([
      ['urgent', conn.endpoint],
      ['test', conn.endpoint],
      ['urgent', moved.endpoint],
    ]);
    h.clock.advance(600_000);
    await flushPromises();
    expect(h.sent).toHaveLength(3);
  });

  it('aborts a push under way to the old endpoint, and a late 410 from it forbids nothing', async () => {
    const h = harness();
    h.notifier.urgent(conn);
    await flushPromises();
    h.notifier.update(moved);
    await flushPromises();
    expect(h.sent[0]!.aborted()).toBe(true);
    h.sent[0]!.answer({ kind: 'gone', status: 410 });
    h.sent[1]!.answer(delivered);
    await flushPromises();
    expect(h.gone).toEqual([]);
    expect(h.sent.map((s) => s.endpoint)).toEqual([conn.endpoint, moved.endpoint]);
  });

  it('sends nothing more for a forgotten (removed or forbidden) connection: no retry, no trailing push', async () => {
    const h = harness();
    h.notifier.urgent(conn);
    h.notifier.test(conn);
    h.notifier.urgent(conn); // within the interval: a trailing push is scheduled
    await flushPromises();
    h.sent[0]!.answer(failed503);
    h.sent[1]!.answer(failed503);
    await flushPromises();
    h.notifier.forget(conn);
    h.clock.advance(600_000);
    await flushPromises();
    expect(h.sent).toHaveLength(2);
  });
});
