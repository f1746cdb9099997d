import type { Connection, ConnectionKey, LeftBehindCandidate } from './store/store.js';

/**
 * Forbidden connections left behind by a re-link: of the candidates (rows forbidden for the kept time, with the
 * devices of their account registered here later that are not forbidden; the store finds them), those whose newer
 * device is connected. Until then the row answers the old Molly's re-registrations with `forbidden` without asking
 * Signal, and `connection list` shows why it stopped. Pure.
 */
export function leftBehind(candidates: readonly LeftBehindCandidate[], isConnected: (key: ConnectionKey) => boolean): Connection[] {
  return candidates.filter((c) => c.newerDevices.some((deviceId) => isConnected({ uuid: c.conn.uuid, deviceId }))).map((c) => c.conn);
}
