import { backoffDelay, type BackoffOptions } from '../backoff.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { RelayEvents } from '../events.js';
import type { Logger } from '../log.js';
import { endpointOrigin, shortUuid } from '../log.js';
import type { Metrics } from '../metrics.js';
import { connectionKey, type Connection, type ConnectionKey } from '../store/store.js';
import type { PushClient, PushKind, PushOutcome } from './client.js';

export interface NotifierOptions {
  /** Urgent envelopes closer together than this share one push (a trailing one when the interval ends). */
  minIntervalMs: number;
  retry: BackoffOptions;
  /** A push not delivered after this long is given up, with a warning. */
  giveUpAfterMs: number;
}

export interface NotifierDeps {
  client: Pick<PushClient, 'send'>;
  log: Logger;
  /** Where it says that an endpoint answered 404 or 410 (`gone`: the distributor unregistered it). */
  events: RelayEvents;
  /** Whether a connection still wants pushes (not removed, not forbidden); asked before every retry. */
  isActive(conn: ConnectionKey): boolean;
  metrics?: Metrics;
  clock?: Clock;
  random?: () => number;
}

/** Where a connection's pushes go: all the notifier keeps of it (never its password). */
export type PushTarget = Pick<Connection, 'uuid' | 'deviceId' | 'endpoint'>;
const targetOf = (c: PushTarget): PushTarget => ({ uuid: c.uuid, deviceId: c.deviceId, endpoint: c.endpoint });

/** When the next urgent push of a connection may start. Pure. */
function nextUrgentPushAt(lastStartAt: number | undefined, blockedUntil: number, minIntervalMs: number): number {
  return Math.max(lastStartAt === undefined ? -Infinity : lastStartAt + minIntervalMs, blockedUntil);
}

/**
 * What to do after an answer: stop, or try again after `delayMs`. Pure.
 * 429 waits exactly what the server asked (else backs off); 5xx, timeouts and network errors back off.
 */
function retryAfter(outcome: PushOutcome, attempt: number, retry: BackoffOptions, random: number): number | undefined {
  if (outcome.kind === 'rate_limited') return outcome.retryAfterMs ?? backoffDelay(attempt, retry, random);
  if (outcome.kind === 'failed') return backoffDelay(attempt, retry, random, outcome.retryAfterMs);
  return undefined;
}

/** One message to deliver, possibly over several attempts. */
interface Delivery {
  kind: PushKind;
  conn: PushTarget;
  firstAt: number;
  attempt: number;
  timer: TimerHandle | undefined;
  abort: AbortController;
  /** A newer urgent push took over, or the connection went away: no more attempts. */
  cancelled: boolean;
}

/** The urgent pushes of one connection. */
interface Lane {
  conn: PushTarget;
  lastStartAt: number | undefined;
  /** A push server's 429 holds every push of the connection until then. */
  blockedUntil: number;
  /** A trailing push is scheduled: every envelope so far will be followed by a push. */
  trailing: TimerHandle | undefined;
  current: Delivery | undefined;
  /**
   * Another instance runs the connection now: what this one owed for envelopes it acknowledged still goes out, retried
   * as ever, although the supervisor here no longer wants pushes for it.
   */
  released: boolean;
}

/**
 * Sends the wake-ups of every connection without ever blocking the websocket: callers return at once.
 * Urgent envelopes are coalesced per connection without loss: after the last one there is always a push that
 * started after it. Failed pushes are retried until delivered or superseded by a newer push.
 */
export class Notifier {
  private readonly lanes = new Map<string, Lane>();
  /** Every delivery not yet delivered, given up or cancelled: what a change of the connection must reach. */
  private readonly pending = new Set<Delivery>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly clock: Clock;
  private readonly random: () => number;

  constructor(
    private readonly opts: NotifierOptions,
    private readonly deps: NotifierDeps,
  ) {
    this.clock = deps.clock ?? systemClock;
    this.random = deps.random ?? Math.random;
  }

  urgent(conn: PushTarget): void {
    const lane = this.lane(conn);
    lane.released = false; // running here again
    if (lane.trailing !== undefined) return; // the scheduled push starts after this envelope
    const now = this.clock.now();
    const at = nextUrgentPushAt(lane.lastStartAt, lane.blockedUntil, this.opts.minIntervalMs);
    if (at <= now) {
      this.startUrgent(lane);
      return;
    }
    lane.trailing = this.clock.setTimeout(() => {
      lane.trailing = undefined;
      this.startUrgent(lane);
    }, at - now);
  }

  test(conn: PushTarget): void {
    this.attempt(this.delivery('test', conn), undefined);
  }

  deliveryCheck(conn: PushTarget): void {
    this.attempt(this.delivery('delivery_check', conn), undefined);
  }

  /**
   * The stored connection changed (Molly registered again). A new endpoint takes over at once: an urgent push not
   * yet delivered starts again there, a test push or delivery check for the old endpoint is dropped.
   */
  update(conn: PushTarget): void {
    const key = connectionKey(conn);
    for (const d of this.pending) {
      if (d.kind !== 'urgent' && connectionKey(d.conn) === key && d.conn.endpoint !== conn.endpoint) this.cancel(d);
    }
    const lane = this.lanes.get(key);
    if (!lane || lane.conn.endpoint === conn.endpoint) return;
    lane.conn = targetOf(conn);
    lane.blockedUntil = 0; // a 429 of the old push server says nothing about the new one
    if (!lane.current) return;
    this.cancel(lane.current);
    lane.current = undefined;
    if (lane.trailing === undefined) this.startUrgent(lane); // else the trailing push carries the news
  }

  /** Stops everything pending for a connection that was removed or forbidden, and forgets it. */
  forget(key: ConnectionKey): void {
    for (const d of this.pending) if (connectionKey(d.conn) === connectionKey(key)) this.cancel(d);
    const lane = this.lanes.get(connectionKey(key));
    if (!lane) return;
    this.clock.clearTimeout(lane.trailing);
    this.lanes.delete(connectionKey(key));
  }

  /**
   * Another instance runs the connection now (a hand-over): the trailing push owed for envelopes this one acknowledged
   * starts at once rather than never, and a push under way keeps its retries; nothing new comes for it here.
   */
  release(key: ConnectionKey): void {
    const lane = this.lanes.get(connectionKey(key));
    if (!lane) return;
    lane.released = true;
    this.startTrailingNow(lane);
  }

  /**
   * At shutdown: sends the trailing pushes now rather than never, then waits for pushes under way, at most `ms`.
   * Returns the connections whose wake-up is still not delivered.
   */
  async drain(ms: number): Promise<ConnectionKey[]> {
    for (const lane of this.lanes.values()) this.startTrailingNow(lane);
    let timer: TimerHandle | undefined;
    const deadline = new Promise<void>((resolve) => (timer = this.clock.setTimeout(resolve, ms)));
    await Promise.race([Promise.allSettled([...this.inFlight]), deadline]);
    this.clock.clearTimeout(timer);
    const owed: ConnectionKey[] = [];
    for (const lane of this.lanes.values()) {
      if (lane.current) owed.push({ uuid: lane.conn.uuid, deviceId: lane.conn.deviceId });
    }
    for (const d of this.pending) this.cancel(d);
    return owed;
  }

  private startTrailingNow(lane: Lane): void {
    if (lane.trailing === undefined) return;
    this.clock.clearTimeout(lane.trailing);
    lane.trailing = undefined;
    this.startUrgent(lane);
  }

  private lane(conn: PushTarget): Lane {
    const key = connectionKey(conn);
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = { conn: targetOf(conn), lastStartAt: undefined, blockedUntil: 0, trailing: undefined, current: undefined, released: false };
      this.lanes.set(key, lane);
    }
    if (lane.conn.endpoint !== conn.endpoint) lane.conn = targetOf(conn); // the newest endpoint
    return lane;
  }

  private delivery(kind: PushKind, conn: PushTarget): Delivery {
    const now = this.clock.now();
    const d: Delivery = { kind, conn: targetOf(conn), firstAt: now, attempt: 0, timer: undefined, abort: new AbortController(), cancelled: false };
    this.pending.add(d);
    return d;
  }

  private startUrgent(lane: Lane): void {
    lane.lastStartAt = this.clock.now();
    if (lane.current) this.cancel(lane.current); // superseded: the new push carries the same news
    lane.current = this.delivery('urgent', lane.conn);
    this.attempt(lane.current, lane);
  }

  private cancel(d: Delivery): void {
    this.pending.delete(d);
    d.cancelled = true;
    this.clock.clearTimeout(d.timer);
    d.abort.abort();
  }

  private attempt(d: Delivery, lane: Lane | undefined): void {
    // A trailing push is due within the interval and carries the same news: it takes over from this retry.
    if (lane?.trailing !== undefined && d.attempt > 0) return;
    if (lane) d.conn = lane.conn;
    const started = performance.now();
    const sending = this.deps.client
      .send(d.conn.endpoint, d.kind, d.abort.signal)
      .then((outcome) => {
        if (!d.cancelled) this.answered(d, lane, outcome, (performance.now() - started) / 1000);
      })
      .catch((err: unknown) => this.deps.log.error({ err, kind: d.kind }, 'handling a push answer failed'))
      .finally(() => this.inFlight.delete(sending));
    this.inFlight.add(sending);
  }

  private answered(d: Delivery, lane: Lane | undefined, outcome: PushOutcome, seconds: number): void {
    this.deps.metrics?.pushed(d.kind, outcome, seconds, d.attempt > 0);
    const fields = {
      uuid: shortUuid(d.conn.uuid),
      device: d.conn.deviceId,
      endpoint: endpointOrigin(d.conn.endpoint),
      kind: d.kind,
      attempt: d.attempt + 1,
      outcome,
    };
    const delayMs = retryAfter(outcome, d.attempt, this.opts.retry, this.random());
    if (delayMs === undefined) {
      this.pending.delete(d);
      if (lane?.current === d) lane.current = undefined;
      if (outcome.kind === 'delivered') this.deps.log.debug(fields, 'push delivered');
      else if (outcome.kind === 'gone') {
        if ((this.lanes.get(connectionKey(d.conn))?.conn.endpoint ?? d.conn.endpoint) !== d.conn.endpoint) {
          this.deps.log.info(fields, 'a replaced push endpoint is gone: nothing to do');
          return;
        }
        this.deps.log.warn(fields, 'push endpoint gone: the connection is disabled until Molly registers a new one');
        this.forget(d.conn);
        this.deps.events.emit('gone', d.conn);
      } else this.deps.log.warn(fields, 'push refused: not retried (check allowed_endpoints and the VAPID key)');
      return;
    }
    const now = this.clock.now();
    if (lane && outcome.kind === 'rate_limited') lane.blockedUntil = now + delayMs;
    if (now + delayMs - d.firstAt > this.opts.giveUpAfterMs) {
      this.deps.log.warn(fields, 'push not delivered in time: given up');
      this.pending.delete(d);
      if (lane?.current === d) lane.current = undefined;
      return;
    }
    if (!lane?.released && !this.deps.isActive(d.conn)) {
      this.pending.delete(d);
      return;
    }
    this.deps.log.info({ ...fields, retryInMs: delayMs }, 'push failed: will retry');
    d.attempt++;
    d.timer = this.clock.setTimeout(() => this.attempt(d, lane), delayMs);
  }
}
