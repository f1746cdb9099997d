import { BlockList, isIP } from 'node:net';
import { systemResolver } from './resolver.js';

/** Who may register, and which UnifiedPush endpoints may be pushed to, at which address (PROTOCOL.md section 5). */

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuidAllowed(uuid: string, allowed: readonly string[]): boolean {
  if (!UUID_RE.test(uuid)) return false;
  return allowed.some((a) => a === '*' || a.toLowerCase() === uuid.toLowerCase());
}

/** Why a uuid may not register, for the command line; undefined when it may. */
export function uuidRefusal(uuid: string, allowed: readonly string[]): string | undefined {
  if (isUuidAllowed(uuid, allowed)) return undefined;
  return `uuid ${uuid} is not allowed: it must be an account UUID allowed by allowed_uuids (${JSON.stringify(allowed)})`;
}

/** Address ranges that are not globally routable (IANA special-purpose registries). */
const SPECIAL = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.88.99.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15],
  ['198.51.100.0', 24], ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) SPECIAL.addSubnet(net, prefix, 'ipv4');
for (const [net, prefix] of [
  ['::', 96], // unspecified, loopback and the deprecated IPv4-compatible addresses
  ['64:ff9b:1::', 48], ['100::', 64], ['2001::', 23], ['2001:db8::', 32], ['fc00::', 7], ['fe80::', 10], ['fec0::', 10],
  ['ff00::', 8],
] as const) SPECIAL.addSubnet(net, prefix, 'ipv6');
// IPv4-mapped (::ffff:a.b.c.d) addresses are matched against the IPv4 ranges by BlockList itself.

/** The IPv4 address inside a NAT64 address (64:ff9b::/96), which decides where traffic really goes. */
function nat64Embedded(ip: string): string | undefined {
  const m = /^64:ff9b::(?:(\d+\.\d+\.\d+\.\d+)|([0-9a-f]{1,4}):([0-9a-f]{1,4}))$/i.exec(ip);
  if (!m) return undefined;
  if (m[1]) return m[1];
  const n = (parseInt(m[2] as string, 16) << 16) | parseInt(m[3] as string, 16);
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Whether an IP address is globally routable: not loopback, private, link-local, CGNAT, multicast, ... */
export function isGlobalAddress(ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return false;
  if (family === 6) {
    const embedded = nat64Embedded(ip);
    if (embedded) return isGlobalAddress(embedded);
  }
  return !SPECIAL.check(ip, family === 4 ? 'ipv4' : 'ipv6');
}

/** Same scheme, host, port and userinfo; the path of an entry is ignored, as MollySocket does. */
function sameOrigin(a: URL, b: URL): boolean {
  return a.origin === b.origin && a.username === b.username && a.password === b.password;
}

export type EndpointVerdict =
  | { allowed: true; explicit: boolean; url: URL }
  | { allowed: false; reason: string };

/**
 * The static part of the endpoint policy. `explicit` tells whether an entry names this origin; only
 * endpoints allowed through "*" must also resolve to globally routable addresses.
 */
export function checkEndpoint(endpoint: string, allowed: readonly string[]): EndpointVerdict {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return { allowed: false, reason: 'not a URL' };
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return { allowed: false, reason: 'not http or https' };
  for (const entry of allowed) {
    if (entry !== '*' && sameOrigin(new URL(entry), url)) return { allowed: true, explicit: true, url };
  }
  if (allowed.includes('*')) return { allowed: true, explicit: false, url };
  return { allowed: false, reason: 'not in allowed_endpoints' };
}

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}
export type Resolver = (host: string) => Promise<ResolvedAddress[]>;


export type ResolvedEndpoint =
  | { ok: true; url: URL; address: ResolvedAddress }
  | { ok: false; reason: string; /** true when asking again later may succeed (DNS failure) */ transient: boolean };

/**
 * The whole endpoint policy: the static check, then one DNS resolution. An endpoint allowed only through "*"
 * must resolve to globally routable addresses only. The caller connects to the returned address and no other.
 */
export class EndpointPolicy {
  constructor(
    private readonly allowed: readonly string[],
    private readonly resolve: Resolver = systemResolver,
  ) {}

  async check(endpoint: string): Promise<ResolvedEndpoint> {
    const verdict = checkEndpoint(endpoint, this.allowed);
    if (!verdict.allowed) return { ok: false, reason: verdict.reason, transient: false };
    const host = verdict.url.hostname.replace(/^\[(.*)\]$/, '$1');
    let addresses: ResolvedAddress[];
    if (isIP(host)) {
      addresses = [{ address: host, family: isIP(host) === 6 ? 6 : 4 }];
    } else {
      try {
        addresses = await this.resolve(host);
      } catch (err) {
        return { ok: false, reason: `cannot resolve ${host}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, transient: true };
      }
    }
    if (addresses.length === 0) return { ok: false, reason: `${host} has no address`, transient: true };
    if (!verdict.explicit && !addresses.every((a) => isGlobalAddress(a.address))) {
      return {
        ok: false,
        reason: `${host} ${isIP(host) ? 'is' : 'resolves to'} an address that is not globally routable; allow it explicitly in allowed_endpoints`,
        transient: false,
      };
    }
    return { ok: true, url: verdict.url, address: addresses[0] as ResolvedAddress };
  }
}
