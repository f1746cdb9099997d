import type { Logger } from '../log.js';
import { endpointOrigin, shortUuid } from '../log.js';
import type { Connection } from '../store.js';
import type { PushClient, PushKind, PushOutcome } from './client.js';

export interface NotifierEvents {
  /** The endpoint answered 404 or 410: the distributor unregistered it. */
  onGone(conn: Connection): void;
}

/**
 * Sends the wake-ups of every connection. Callers never wait on it: the websocket keeps acking while a push is
 * under way.
 */
export class Notifier {
  constructor(
    private readonly client: PushClient,
    private readonly events: NotifierEvents,
    private readonly log: Logger,
  ) {}

  urgent(conn: Connection): void {
    void this.push(conn, 'urgent');
  }

  test(conn: Connection): void {
    void this.push(conn, 'test');
  }

  async push(conn: Connection, kind: PushKind): Promise<PushOutcome> {
    const outcome = await this.client.send(conn.endpoint, kind);
    const fields = { uuid: shortUuid(conn.uuid), device: conn.deviceId, endpoint: endpointOrigin(conn.endpoint), kind, outcome };
    if (outcome.kind === 'delivered') this.log.debug(fields, 'push delivered');
    else this.log.warn(fields, 'push not delivered');
    if (outcome.kind === 'gone') this.events.onGone(conn);
    return outcome;
  }
}
