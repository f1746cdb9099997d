import { describe, expect, it } from 'vitest';
import { ConnectRamp } from '../../src/signal/ramp.js';
import { ManualClock } from '../fakes/clock.js';

describe('connect ramp', () => {
  it('starts a burst, then one attempt per token, and never more in flight than allowed', () => {
    const clock = new ManualClock();
    const ramp = new ConnectRamp({ ratePerSecond: 4, concurrency: 2 }, clock);
    const releases: (() => void)[] = [];
    let started = 0;
    for (let i = 0; i < 6; i++) ramp.enqueue((release) => (started++, releases.push(release)));
    expect(started).toBe(2);
    clock.advance(1_000);
    expect(started).toBe(2); // tokens, but no free slot
    releases[0]!();
    releases[0]!(); // a second release of the same attempt frees nothing more
    expect(started).toBe(3);
    releases[1]!();
    releases[2]!();
    expect(started).toBe(4); // the burst is two tokens: one left after the third start
    clock.advance(250);
    expect(started).toBe(5);
  });

  it('skips attempts taken back before they started', () => {
    const clock = new ManualClock();
    const ramp = new ConnectRamp({ ratePerSecond: 1, concurrency: 1 }, clock);
    const order: string[] = [];
    ramp.enqueue((release) => {
      order.push('a');
      release();
    });
    const cancelB = ramp.enqueue(() => order.push('b'));
    ramp.enqueue(() => order.push('c'));
    cancelB();
    expect(ramp.waiting).toBe(1);
    clock.advance(1_000);
    expect(order).toEqual(['a', 'c']);
  });
});
