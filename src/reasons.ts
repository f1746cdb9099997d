import { ENDPOINT_GONE } from './registrations.js';

/**
 * Why a connection is in its state, in a person's words, for `status` and `connection list` (their `--json` keeps the
 * codes). The codes are the stored forbidden reasons and what the supervisor publishes (src/signal/supervisor.ts).
 * Pure.
 */
export function describeReason(reason: string): string {
  const fixed = FIXED[reason];
  if (fixed !== undefined) return fixed;
  let m: RegExpExecArray | null;
  if ((m = /^closed (\d+)(?: (.*))?$/.exec(reason))) return `Signal closed the socket (${m[1]}${m[2] ? `: ${m[2]}` : ''})`;
  if ((m = /^upgrade answered (\d+)$/.exec(reason))) return UPGRADE[m[1]!] ?? `Signal answered ${m[1]} to the connection`;
  if ((m = /^network: (.*)$/.exec(reason))) return `network error: ${m[1]}`;
  if ((m = /^(connect|keepalive) timeout$/.exec(reason))) {
    return m[1] === 'connect' ? 'Signal did not answer the connection in time' : 'Signal did not answer a keepalive in time';
  }
  return reason; // already words (4409, 4401: see the supervisor), or a code of a newer version
}

const FIXED: Record<string, string> = {
  signal_403: 'Signal refused the credentials (403)',
  [ENDPOINT_GONE]: 'the push server said the endpoint is gone (404 or 410)',
  forbidden_in_mollysocket: 'copied from MollySocket as forbidden',
  forbidden: 'forbidden, no reason recorded',
  started: 'starting',
  'settings changed': 'new credentials or endpoint',
  retry: 'trying again',
  open: 'socket open',
  stopped: 'stopped',
  'handed over': 'handed over to another instance',
  'waiting for the lease': 'waiting for the lease (PostgreSQL unreachable?)',
  'not picked up yet': 'not picked up by the server yet',
  'server not running': 'the server is not running',
  unknown: 'forbidden, no reason recorded',
};

const UPGRADE: Record<string, string> = {
  '429': 'Signal asks to slow down (429)',
  '499': 'Signal refused this client version (499): upgrade mollysocket, or set user_agent',
};
