/** Who may register, and which UnifiedPush endpoints may be pushed to (PROTOCOL.md section 5). */

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuidAllowed(uuid: string, allowed: readonly string[]): boolean {
  if (!UUID_RE.test(uuid)) return false;
  return allowed.some((a) => a === '*' || a.toLowerCase() === uuid.toLowerCase());
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
