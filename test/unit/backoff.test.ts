import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../../src/backoff.js';

const opts = { baseMs: 1000, capMs: 300_000 };

describe('reconnect backoff', () => {
  it('grows exponentially from about a second, with jitter between half and all of the step', () => {
    expect(backoffDelay(0, opts, 0)).toBe(500);
    expect(backoffDelay(0, opts, 1)).toBe(1000);
    expect(backoffDelay(3, opts, 0)).toBe(4000);
    expect(backoffDelay(3, opts, 1)).toBe(8000);
  });

  it('never exceeds the cap, however many attempts', () => {
    for (const attempt of [9, 20, 1000]) expect(backoffDelay(attempt, opts, 1)).toBe(300_000);
  });

  it("honours a server's Retry-After when longer, within the cap", () => {
    expect(backoffDelay(0, opts, 0, 30_000)).toBe(30_000);
    expect(backoffDelay(0, opts, 0, 10 * 3600_000)).toBe(300_000);
    expect(backoffDelay(5, opts, 1, 100)).toBe(32_000);
  });
});
