import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

/**
 * Which IP addresses a push may go to through "*", and which peers are on the operator's own network.
 * The ranges are those of IANA's special-purpose address registries (iana-ipv4-special-registry,
 * iana-ipv6-special-registry): every entry is refused, whatever its "globally reachable" column says, since none of
 * them is where a push server lives. ipaddr.js parses the addresses (every IPv6 spelling, zones, embedded IPv4).
 */

type Range = readonly [cidr: string, why: string];

const IPV4_SPECIAL: readonly Range[] = [
  ['0.0.0.0/8', 'RFC 791: this network'],
  ['10.0.0.0/8', 'RFC 1918: private use'],
  ['100.64.0.0/10', 'RFC 6598: shared address space (CGNAT)'],
  ['127.0.0.0/8', 'RFC 1122: loopback'],
  ['169.254.0.0/16', 'RFC 3927: link local'],
  ['172.16.0.0/12', 'RFC 1918: private use'],
  // With 192.0.0.0/29 (RFC 7335), 192.0.0.8 (RFC 7600), the PCP and TURN anycasts and NAT64 discovery (RFC 8880).
  ['192.0.0.0/24', 'RFC 6890: IETF protocol assignments'],
  ['192.0.2.0/24', 'RFC 5737: documentation (TEST-NET-1)'],
  ['192.31.196.0/24', 'RFC 7535: AS112-v4'],
  ['192.52.193.0/24', 'RFC 7450: AMT'],
  ['192.88.99.0/24', 'RFC 7526: deprecated 6to4 relay anycast'],
  ['192.168.0.0/16', 'RFC 1918: private use'],
  ['192.175.48.0/24', 'RFC 7534: direct delegation AS112 service'],
  ['198.18.0.0/15', 'RFC 2544: benchmarking'],
  ['198.51.100.0/24', 'RFC 5737: documentation (TEST-NET-2)'],
  ['203.0.113.0/24', 'RFC 5737: documentation (TEST-NET-3)'],
  ['224.0.0.0/4', 'RFC 5771: multicast (not in the registry, never a unicast destination)'],
  ['240.0.0.0/4', 'RFC 1112: reserved, with 255.255.255.255 (RFC 8190: limited broadcast)'],
];

const IPV6_SPECIAL: readonly Range[] = [
  ['::/96', 'RFC 4291: unspecified, loopback, deprecated IPv4-compatible'],
  ['64:ff9b:1::/48', 'RFC 8215: local-use IPv4/IPv6 translation'],
  ['100::/64', 'RFC 6666: discard-only'],
  ['100:0:0:1::/64', 'RFC 9780: dummy prefix'],
  // With Teredo 2001::/32 (RFC 4380), benchmarking 2001:2::/48 (RFC 5180), ORCHIDv2 2001:20::/28 (RFC 7343), AMT, AS112-v6.
  ['2001::/23', 'RFC 2928: IETF protocol assignments'],
  ['2001:db8::/32', 'RFC 3849: documentation'],
  ['2620:4f:8000::/48', 'RFC 7534: direct delegation AS112 service'],
  ['3fff::/20', 'RFC 9637: documentation'],
  ['5f00::/16', 'RFC 9602: segment routing (SRv6) SIDs'],
  ['fc00::/7', 'RFC 4193: unique local'],
  ['fe80::/10', 'RFC 4291: link-local unicast'],
  ['fec0::/10', 'RFC 3879: deprecated site-local'],
  ['ff00::/8', 'RFC 4291: multicast'],
];

/** IPv6 forms that carry an IPv4 address, which decides where the traffic really goes: checked as that IPv4. */
const IPV4_EMBEDDED: readonly (readonly [cidr: string, firstByte: number, why: string])[] = [
  ['::ffff:0:0/96', 12, 'RFC 4291: IPv4-mapped'],
  ['::ffff:0:0:0/96', 12, 'RFC 6145: IPv4-translated'],
  ['64:ff9b::/96', 12, 'RFC 6052: IPv4/IPv6 translation (NAT64)'],
  ['2002::/16', 2, 'RFC 3056: 6to4'],
];

/** RFC 4291, IANA's IPv6 address space: global unicast is 2000::/3, the rest is not allocated for it. */
const IPV6_GLOBAL_UNICAST = ipaddr.IPv6.parseCIDR('2000::/3');

/** Loopback, private use, unique local, link local and CGNAT: where a reverse proxy or a container network sits. */
const LOCAL_NETWORK: readonly string[] = [
  '127.0.0.0/8',
  '10.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  '169.254.0.0/16',
  '100.64.0.0/10',
  '::1/128',
  'fc00::/7',
  'fe80::/10',
];

const v4Ranges = (list: readonly string[]) => list.filter((c) => !c.includes(':')).map((c) => ipaddr.IPv4.parseCIDR(c));
const v6Ranges = (list: readonly string[]) => list.filter((c) => c.includes(':')).map((c) => ipaddr.IPv6.parseCIDR(c));
const SPECIAL_V4 = v4Ranges(IPV4_SPECIAL.map(([c]) => c));
const SPECIAL_V6 = v6Ranges(IPV6_SPECIAL.map(([c]) => c));
const EMBEDDED = IPV4_EMBEDDED.map(([c, firstByte]) => ({ range: ipaddr.IPv6.parseCIDR(c), firstByte }));
const LOCAL_V4 = v4Ranges(LOCAL_NETWORK);
const LOCAL_V6 = v6Ranges(LOCAL_NETWORK);

/** The address, with an IPv6 form that embeds an IPv4 address replaced by that address; undefined if not an IP. */
function effectiveAddress(ip: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  if (isIP(ip) === 0) return undefined; // also refuses ipaddr.js's lenient IPv4 spellings (127.1, 0x7f.0.0.1)
  const addr = ipaddr.parse(ip);
  if (addr instanceof ipaddr.IPv4) return addr;
  const embedding = EMBEDDED.find((e) => addr.match(e.range));
  return embedding ? new ipaddr.IPv4(addr.toByteArray().slice(embedding.firstByte, embedding.firstByte + 4)) : addr;
}

/** Whether an IP address is globally routable: in no special-purpose range, embedded IPv4 checked as IPv4. */
export function isGlobalAddress(ip: string): boolean {
  const addr = effectiveAddress(ip);
  if (addr === undefined) return false;
  if (addr instanceof ipaddr.IPv4) return !SPECIAL_V4.some((r) => addr.match(r));
  return addr.match(IPV6_GLOBAL_UNICAST) && !SPECIAL_V6.some((r) => addr.match(r));
}

/** Whether a peer is on the operator's own network (loopback, private, link local, CGNAT): a proxy, not a phone. */
export function isLocalNetworkAddress(ip: string): boolean {
  const addr = effectiveAddress(ip);
  if (addr === undefined) return false;
  return addr instanceof ipaddr.IPv4 ? LOCAL_V4.some((r) => addr.match(r)) : LOCAL_V6.some((r) => addr.match(r));
}

/** Whether a `trust_proxy` entry is an address or a CIDR range (or a range name proxy-addr knows). */
export function isProxyAddressEntry(entry: string): boolean {
  return ['loopback', 'linklocal', 'uniquelocal'].includes(entry) || isIP(entry) !== 0 || ipaddr.isValidCIDR(entry);
}
