import { promises as dns } from 'node:dns';
import { readFile, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { LRUCache } from 'lru-cache';
import { systemClock, type Clock } from './clock.js';

/** One address a name resolves to. */
export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}
/** How a push endpoint's host name becomes addresses (tests map names to loopback). */
export type Resolver = (host: string) => Promise<ResolvedAddress[]>;

/**
 * Name resolution for push endpoints that no slow name can hold up. `dns.lookup` runs on libuv's four-thread pool,
 * which a few names whose DNS never answers occupy for everyone (file system work included). Here the hosts file is
 * read first (Docker and operators name services there), then DNS is asked through c-ares on the event loop, with a
 * bounded time per name; answers are cached for their TTL and concurrent asks for one name share one query.
 */

export interface ResolverOptions {
  /** Time for one DNS try; a name gets `tries` of them per server at most. */
  timeoutMs: number;
  tries: number;
  /** DNS servers (`host` or `host:port`); default: the system's (/etc/resolv.conf). */
  servers?: string[];
  hostsFile?: string;
  /** Time for the caches' expiry (tests move it by hand). */
  clock?: Clock;
}

/** An answer is kept this long at most, and a name that does not exist this long. */
const MAX_TTL_MS = 5 * 60_000;
const NEGATIVE_TTL_MS = 30_000;
/** How often the hosts file is checked for changes. */
const HOSTS_CHECK_MS = 5_000;

/** Parses a hosts file: lower-case name -> addresses, in file order. Pure. */
export function parseHosts(text: string): Map<string, ResolvedAddress[]> {
  const hosts = new Map<string, ResolvedAddress[]>();
  for (const line of text.split('\n')) {
    const [address, ...names] = (line.split('#')[0] as string).trim().split(/\s+/);
    const family = address ? isIP(address) : 0;
    if (family === 0) continue;
    for (const name of names) {
      const key = name.toLowerCase();
      hosts.set(key, [...(hosts.get(key) ?? []), { address: address as string, family: family === 6 ? 6 : 4 }]);
    }
  }
  return hosts;
}

type Answer = { addresses: ResolvedAddress[]; expires: number } | { error: NodeJS.ErrnoException; expires: number };

export function createResolver(opts: ResolverOptions): Resolver {
  const resolver = new dns.Resolver({ timeout: opts.timeoutMs, tries: opts.tries });
  if (opts.servers) resolver.setServers(opts.servers);
  const hostsFile = opts.hostsFile ?? '/etc/hosts';
  const clock = opts.clock ?? systemClock;
  let hosts = new Map<string, ResolvedAddress[]>();
  let hostsMtime = -1;
  let hostsCheckedAt = -Infinity;
  let hostsLoading: Promise<void> | undefined;
  const cache = new LRUCache<string, Answer>({ max: 10_000 });
  const pending = new Map<string, Promise<Answer>>();

  async function loadHosts(): Promise<void> {
    try {
      const mtime = (await stat(hostsFile)).mtimeMs;
      if (mtime !== hostsMtime) {
        hosts = parseHosts(await readFile(hostsFile, 'utf8'));
        hostsMtime = mtime;
      }
    } catch {
      hosts = new Map(); // no hosts file: DNS only
    }
  }

  async function fromHostsFile(name: string): Promise<ResolvedAddress[] | undefined> {
    if (clock.now() - hostsCheckedAt >= HOSTS_CHECK_MS) {
      hostsCheckedAt = clock.now();
      hostsLoading = loadHosts();
    }
    await hostsLoading; // every ask waits for the same read
    return hosts.get(name);
  }

  async function query(name: string): Promise<Answer> {
    const [v4, v6] = await Promise.allSettled([resolver.resolve4(name, { ttl: true }), resolver.resolve6(name, { ttl: true })]);
    const records = [
      ...(v4.status === 'fulfilled' ? v4.value.map((r) => ({ ...r, family: 4 as const })) : []),
      ...(v6.status === 'fulfilled' ? v6.value.map((r) => ({ ...r, family: 6 as const })) : []),
    ];
    if (records.length === 0) {
      const failure = [v4, v6].find((r): r is PromiseRejectedResult => r.status === 'rejected');
      const error = (failure?.reason as NodeJS.ErrnoException | undefined) ?? Object.assign(new Error(`${name} has no address`), { code: 'ENODATA' });
      // A name that does not exist is remembered briefly; a timeout is not remembered, the next ask tries again.
      const remembered = error.code === 'ENOTFOUND' || error.code === 'ENODATA';
      return { error, expires: clock.now() + (remembered ? NEGATIVE_TTL_MS : 0) };
    }
    const ttlMs = Math.min(MAX_TTL_MS, Math.min(...records.map((r) => r.ttl)) * 1000);
    return { addresses: records.map(({ address, family }) => ({ address, family })), expires: clock.now() + ttlMs };
  }

  return async (host: string): Promise<ResolvedAddress[]> => {
    const name = host.toLowerCase().replace(/\.$/, '');
    const fromHosts = await fromHostsFile(name);
    if (fromHosts) return fromHosts;
    let answer = cache.get(name);
    if (!answer || answer.expires <= clock.now()) {
      let asking = pending.get(name);
      if (!asking) {
        asking = query(name).finally(() => pending.delete(name));
        pending.set(name, asking);
      }
      answer = await asking;
      if (answer.expires > clock.now()) cache.set(name, answer);
    }
    if ('error' in answer) throw answer.error;
    return answer.addresses;
  };
}

let shared: Resolver | undefined;
/** The resolver push endpoints are resolved with: the system's DNS servers and hosts file, 2 s a try, 2 tries. */
export function systemResolver(host: string): Promise<ResolvedAddress[]> {
  shared ??= createResolver({ timeoutMs: 2_000, tries: 2 });
  return shared(host);
}
