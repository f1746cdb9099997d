import { isIP } from 'node:net';
import { isGlobalAddress } from './addresses.js';
import { systemResolver, type ResolvedAddress, type Resolver } from './resolver.js';

/** Who may register, and which UnifiedPush endpoints may be pushed to, at which address (docs/protocol.md section 5). */

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const isUuid = (uuid: string): boolean => UUID_RE.test(uuid);
/** The one spelling a uuid is stored and matched in (Signal writes them lower-case; a phone may not). */
export const canonicalUuid = (uuid: string): string => uuid.toLowerCase();

export function isUuidAllowed(uuid: string, allowed: readonly string[]): boolean {
  if (!isUuid(uuid)) return false;
  return allowed.some((a) => a === '*' || a.toLowerCase() === uuid.toLowerCase());
}

/** Why a uuid may not register, for the command line; undefined when it may. */
export function uuidRefusal(uuid: string, allowed: readonly string[]): string | undefined {
  if (isUuidAllowed(uuid, allowed)) return undefined;
  if (!isUuid(uuid)) return `uuid ${uuid} is not a UUID: give the account UUID Molly shows, like 6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e`;
  return `uuid ${uuid} is not allowed: it must be an account UUID allowed by allowed_uuids (${JSON.stringify(allowed)})`;
}

/** Same scheme, host, port and userinfo; the path of an entry is ignored, as MollySocket does. */
function sameOrigin(a: URL, b: URL): boolean {
  return a.origin === b.origin && a.username === b.username && a.password === b.password;
}

export type EndpointVerdict = { allowed: true; explicit: boolean; url: URL } | { allowed: false; reason: string };

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
    // An entry that is not a URL never matches (the configuration warned about it), as in MollySocket.
    if (entry !== '*' && URL.canParse(entry) && sameOrigin(new URL(entry), url)) return { allowed: true, explicit: true, url };
  }
  if (allowed.includes('*')) return { allowed: true, explicit: false, url };
  return { allowed: false, reason: 'not in allowed_endpoints' };
}

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
