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
  private readonly inFlight = new Set<Promise<PushOutcome>>();

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

  deliveryCheck(conn: Connection): void {
    void this.push(conn, 'delivery_check');
  }

  /** Waits for pushes under way to finish, at most `ms`. */
  async drain(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
    await Promise.race([Promise.allSettled([...this.inFlight]), deadline]);
    clearTimeout(timer);
  }

  async push(conn: Connection, kind: PushKind): Promise<PushOutcome> {
    const sending = this.client.send(conn.endpoint, kind);
    this.inFlight.add(sending);
    const outcome = await sending.finally(() => this.inFlight.delete(sending));
    const fields = { uuid: shortUuid(conn.uuid), device: conn.deviceId, endpoint: endpointOrigin(conn.endpoint), kind, outcome };
    if (outcome.kind === 'delivered') this.log.debug(fields, 'push delivered');
    else this.log.warn(fields, 'push not delivered');
    if (outcome.kind === 'gone') this.events.onGone(conn);
    return outcome;
  }
}
