import type { Clock, TimerHandle } from '../clock.js';

export interface RampOptions {
  /** Handshakes started per second at most. */
  ratePerSecond: number;
  /** Handshakes in progress at once at most. */
  concurrency: number;
}

interface Waiter {
  start: (release: () => void) => void;
  cancelled: boolean;
}

/**
 * Spreads connection attempts so that a restart with thousands of stored connections, or Signal coming back
 * after an outage, is no handshake storm: a token bucket bounds the rate, a counter the handshakes in flight.
 */
export class ConnectRamp {
  private readonly queue: Waiter[] = [];
  private inFlight = 0;
  private tokens: number;
  private refilledAt: number;
  private timer: TimerHandle | undefined;
  private readonly burst: number;

  constructor(
    private readonly opts: RampOptions,
    private readonly clock: Clock,
  ) {
    this.burst = Math.max(1, Math.min(opts.ratePerSecond, opts.concurrency));
    this.tokens = this.burst;
    this.refilledAt = clock.now();
  }

  /**
   * Runs `start` once a slot is free; `start` gets a `release` to call when the handshake is over (opened or
   * failed). Returns a function that takes the attempt back if it has not started yet.
   */
  enqueue(start: (release: () => void) => void): () => void {
    const waiter: Waiter = { start, cancelled: false };
    this.queue.push(waiter);
    this.pump();
    return () => {
      waiter.cancelled = true;
    };
  }

  get waiting(): number {
    return this.queue.filter((w) => !w.cancelled).length;
  }

  private refill(): void {
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.refilledAt) * this.opts.ratePerSecond) / 1000);
    this.refilledAt = now;
  }

  private pump(): void {
    this.refill();
    while (this.queue.length > 0 && this.inFlight < this.opts.concurrency && this.tokens >= 1) {
      const waiter = this.queue.shift() as Waiter;
      if (waiter.cancelled) continue;
      this.tokens -= 1;
      this.inFlight++;
      let released = false;
      waiter.start(() => {
        if (released) return;
        released = true;
        this.inFlight--;
        this.pump();
      });
    }
    while (this.queue[0]?.cancelled) this.queue.shift();
    if (this.queue.length > 0 && this.tokens < 1 && this.timer === undefined) {
      const wait = Math.ceil(((1 - this.tokens) * 1000) / this.opts.ratePerSecond);
      this.timer = this.clock.setTimeout(() => {
        this.timer = undefined;
        this.pump();
      }, wait);
    }
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.queue) w.cancelled = true;
    this.queue.length = 0;
  }
}
