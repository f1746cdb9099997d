import type { InstanceRow } from './lease-store.js';

/**
 * Whether this instance's sockets reach Signal, from what they do: any socket opening proves the way; devices whose
 * attempts end as an outage (network, timeout, 5xx) count against it. One device that keeps failing among many open
 * sockets is that device's trouble, not the route's.
 */
export class SignalHealth {
  private readonly failing = new Set<string>();

  opened(): void {
    this.failing.clear();
  }

  failed(key: string): void {
    this.failing.add(key);
  }

  forget(key: string): void {
    this.failing.delete(key);
  }

  /** Unreachable: at least three devices (or all, if fewer) failed since the last socket opened, more than are open. */
  reaching(open: number, total: number): boolean {
    const n = this.failing.size;
    return !(n > 0 && n >= Math.min(3, total) && n > open);
  }
}

/**
 * Whether to leave for want of Signal, or to come back: an instance that cannot reach Signal while another live one
 * can gives its devices up; when nobody reaches Signal nothing moves (moving would not help). It comes back once a
 * probe reaches Signal again.
 */
export function signalMove(away: boolean, reaches: boolean, others: readonly InstanceRow[]): 'leave' | 'return' | 'stay' {
  if (away) return reaches ? 'return' : 'stay';
  if (reaches) return 'stay';
  return others.some((o) => o.live && !o.leaving && o.reachesSignal) ? 'leave' : 'stay';
}
