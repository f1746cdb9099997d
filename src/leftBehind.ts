import type { Connection, ConnectionKey } from './store/store.js';

/**
 * Forbidden connections left behind by a re-link: those of an account whose newer device (registered here later)
 * is connected, once they have been forbidden for `keptSeconds`. Until then the row answers the old Molly's
 * re-registrations with `forbidden` without asking Signal, and `connection list` shows why it stopped. Pure.
 */
export function leftBehind(
  conns: readonly Connection[],
  isConnected: (key: ConnectionKey) => boolean,
  now: number,
  keptSeconds: number,
): Connection[] {
  return conns.filter(
    (old) =>
      old.forbidden &&
      now - (old.forbiddenAt ?? old.updatedAt) >= keptSeconds &&
      conns.some((c) => c.uuid === old.uuid && c.deviceId !== old.deviceId && !c.forbidden && c.createdAt > old.createdAt && isConnected(c)),
  );
}
