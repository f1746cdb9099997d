import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';
import { Summary, SUMMARY_INTERVAL_MS, type ConnectionCounts } from '../../src/summary.js';
import { ManualClock } from '../fakes/clock.js';
import { eventually, memoryLogger } from '../helpers/index.js';

const delivered = { kind: 'delivered', status: 201 } as const;
const failed = { kind: 'failed', status: 503 } as const;

function harness() {
  const clock = new ManualClock();
  const { log, lines } = memoryLogger();
  const metrics = new Metrics();
  const counts: ConnectionCounts = { total: 5, connecting: 3, connected: 1, backoff: 0, forbidden: 1 };
  const summary = new Summary({ log, clock, counts: () => counts, metrics });
  const logged = (msg: string) =>
    lines()
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === msg);
  return { clock, metrics, counts, summary, logged };
}

describe('the summary lines', () => {
  it('says once, after the ramp, how many connections are stored and connected and how long it took', () => {
    const h = harness();
    h.summary.start();
    h.clock.advance(4_000);
    expect(h.logged('start-up: every stored connection has been tried')).toEqual([]); // still connecting
    Object.assign(h.counts, { connecting: 0, connected: 3, backoff: 1 });
    h.clock.advance(1_000);
    expect(h.logged('start-up: every stored connection has been tried')).toEqual([
      expect.objectContaining({ level: 30, stored: 5, connected: 3, reconnecting: 1, forbidden: 1, took_s: 5 }),
    ]);
    h.clock.advance(60_000);
    expect(h.logged('start-up: every stored connection has been tried')).toHaveLength(1);
  });

  it('then every interval: the counts, and the pushes and registrations since the last line, never a line per push', async () => {
    const h = harness();
    Object.assign(h.counts, { connecting: 1, connected: 3, backoff: 1 });
    h.summary.start();
    for (let i = 0; i < 7; i++) h.metrics.pushed('urgent', delivered, 0.1, false);
    h.metrics.pushed('urgent', failed, 0.1, false);
    h.metrics.pushed('urgent', delivered, 0.1, true);
    h.metrics.requestDone('/', 'POST', 200, 0.01);
    h.metrics.requestDone('/', 'POST', 200, 0.01);
    h.metrics.requestDone('/health', 'GET', 200, 0.01); // not a registration
    h.clock.advance(SUMMARY_INTERVAL_MS - 1);
    expect(h.logged('summary')).toEqual([]);
    h.clock.advance(1);
    await eventually(() => h.logged('summary').length === 1, 'the summary line');
    expect(h.logged('summary')[0]).toEqual(
      expect.objectContaining({
        level: 30,
        connected: 3,
        reconnecting: 2,
        forbidden: 1,
        pushes_delivered: 8,
        pushes_failed: 1,
        pushes_retried: 1,
        registrations: 2,
        period_s: 300,
      }),
    );

    h.metrics.pushed('test', delivered, 0.1, false);
    h.clock.advance(SUMMARY_INTERVAL_MS);
    await eventually(() => h.logged('summary').length === 2, 'the next summary line');
    expect(h.logged('summary')[1]).toEqual(
      expect.objectContaining({ pushes_delivered: 1, pushes_failed: 0, pushes_retried: 0, registrations: 0, period_s: 300 }),
    );
    h.summary.stop();
    h.clock.advance(3 * SUMMARY_INTERVAL_MS);
    expect(h.clock.nextDue()).toBeUndefined(); // stopped: no timer left
  });
});
