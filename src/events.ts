import { EventEmitter } from 'node:events';
import type { Connection, ConnectionKey } from './store/store.js';

/**
 * What the supervisor (sockets to Signal) and the notifier (pushes to endpoints) tell each other: the relay's loop,
 * named in one place. The supervisor emits the first five and the notifier follows them; the notifier emits `gone` and
 * the supervisor forbids the connection. Listeners run synchronously and must not block.
 */
export interface RelayEventMap {
  /** An urgent envelope arrived (or a wake-up is owed once the socket opened): push a wake-up. */
  urgent: [conn: Connection];
  /** Close code 4409, the device connected elsewhere: a push that tells whether the endpoint still exists. */
  deliveryCheck: [conn: Connection];
  /** A stored connection's endpoint or credentials changed, and it is still enabled: pending pushes follow. */
  changed: [conn: Connection];
  /** Removed or forbidden: nothing may be pushed for it any more. */
  removed: [key: ConnectionKey];
  /** Another instance runs it now: what was owed for envelopes acknowledged here still goes out, nothing new. */
  handedOver: [key: ConnectionKey];
  /** The push endpoint answered 404 or 410: the distributor unregistered it. */
  gone: [target: Pick<Connection, 'uuid' | 'deviceId' | 'endpoint'>];
}

export class RelayEvents extends EventEmitter<RelayEventMap> {}
