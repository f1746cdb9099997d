import ipaddr from 'ipaddr.js';
import { LRUCache } from 'lru-cache';

/**
 * Who counts as one client for the per-client bounds: an IPv4 address, or an IPv6 /64 (one subscriber's network:
 * whoever has one address of it has them all). IPv4 in IPv6 (`::ffff:a.b.c.d`) is the IPv4 address. Pure.
 */
export function clientKey(address: string): string {
  if (!ipaddr.isValid(address)) return address;
  const parsed = ipaddr.process(address);
  if (parsed.kind() === 'ipv4') return parsed.toString();
  const parts = (parsed as ipaddr.IPv6).parts.slice(0, 4);
  return `${parts.map((p) => p.toString(16)).join(':')}::/64`;
}

/** Open connections per client: `open` refuses one over the bound, `close` gives its place back. */
export class ConnectionsPerClient {
  private readonly open = new Map<string, number>();

  constructor(private readonly max: number) {}

  /** Counts a new connection of `key`; false (and nothing counted) when it already holds `max`. */
  tryOpen(key: string): boolean {
    const held = this.open.get(key) ?? 0;
    if (held >= this.max) return false;
    this.open.set(key, held + 1);
    return true;
  }

  close(key: string): void {
    const held = this.open.get(key) ?? 0;
    if (held <= 1) this.open.delete(key);
    else this.open.set(key, held - 1);
  }
}

/**
 * How many pages each client may have drawn afresh (a QR code costs some milliseconds of CPU, a cached page almost
 * nothing) per window: a stranger sending a new Host or X-Original-URL every time gets 429, not a QR code each.
 * Fixed windows, clients kept in an LRU (a flood of addresses evicts the oldest windows, never grows without bound).
 */
export class FreshPagesPerClient {
  private readonly drawn: LRUCache<string, { count: number }>;

  constructor(
    private readonly max: number,
    windowMs: number,
    now: () => number = Date.now,
  ) {
    this.drawn = new LRUCache({ max: 10_000, ttl: windowMs, noUpdateTTL: true, ttlResolution: 0, perf: { now } });
  }

  /** Counts one fresh page for `key`; false when its window's pages are used up. */
  take(key: string): boolean {
    const entry = this.drawn.get(key);
    if (entry === undefined) {
      this.drawn.set(key, { count: 1 });
      return true;
    }
    if (entry.count >= this.max) return false;
    entry.count++;
    return true;
  }

  /** Seconds until `key` may have a fresh page again. */
  retryAfterSeconds(key: string): number {
    return Math.max(1, Math.ceil(this.drawn.getRemainingTTL(key) / 1000));
  }
}
