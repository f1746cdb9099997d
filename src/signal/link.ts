import { createSecureContext, type SecureContext } from 'node:tls';
import WebSocket from 'ws';
import type { Clock, TimerHandle } from '../clock.js';
import type { Logger } from '../log.js';
import { parseRetryAfter } from '../http.js';
import { decodeFrame, encodeRequest, encodeResponse, isUrgentEnvelope, type Request } from './protocol.js';

/**
 * One websocket session with the Signal chat server as a linked device (docs/protocol.md section 2): connect with
 * credentials and a timeout, answer every request, keep alive, and say how it ended. It never retries.
 */

export interface LinkCredentials {
  uuid: string;
  deviceId: number;
  password: string;
}

export interface LinkOptions {
  url: string;
  /** CA certificates trusted for wss (Signal's roots, or signal_ca_file). */
  ca: Buffer[] | undefined;
  userAgent: string;
  connectTimeoutMs: number;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  /** Bounds on what one Signal server may make this session hold (tests lower them); LINK_LIMITS by default. */
  limits?: LinkLimits;
  clock: Clock;
  log: Logger;
}

/**
 * One TLS context for every socket trusting the same certificates: given only `ca`, each socket would build and keep
 * a context of its own, several KB apiece at thousands of sockets.
 */
const secureContexts = new WeakMap<Buffer[], SecureContext>();
function secureContextFor(ca: Buffer[]): SecureContext {
  let context = secureContexts.get(ca);
  if (!context) secureContexts.set(ca, (context = createSecureContext({ ca })));
  return context;
}

export interface LinkLimits {
  /** A larger frame (message) from Signal ends the session (close code 1009). */
  maxFrameBytes: number;
  /** Answers and keepalives not yet taken by Signal; more end the session (close code 1008). */
  maxUnsentBytes: number;
}

export const LINK_LIMITS: LinkLimits = {
  // Signal refuses message bodies over 256 KiB (its MessageController), and an envelope wraps one: four times that
  // is room to spare, and 8 links at their bound hold 8 MiB where ws's default (100 MiB) let them hold 800.
  maxFrameBytes: 1024 * 1024,
  // An answer is about 20 bytes: this is some 50,000 answers that Signal did not read, which a server that reads
  // its socket never leaves behind.
  maxUnsentBytes: 1024 * 1024,
};

export interface LinkEvents {
  onOpen(): void;
  onEnvelope(urgent: boolean): void;
}

export type LinkEnd =
  /** 403 at the upgrade: the credentials are no longer valid. */
  | { kind: 'forbidden' }
  /** Another non-101 answer to the upgrade (429, 499, 5xx, ...). */
  | { kind: 'refused'; status: number; retryAfterMs?: number }
  /** The socket closed after it was open. */
  | { kind: 'closed'; code: number; reason: string }
  /** Network or TLS error before the socket opened. */
  | { kind: 'error'; message: string }
  | { kind: 'timeout'; phase: 'connect' | 'keepalive' }
  /** close() was called. */
  | { kind: 'stopped' };

/** Time a closing socket gets for the close handshake before it is cut. */
const CLOSE_GRACE_MS = 2000;

export class SignalLink {
  /** Resolves once, when the session is over. */
  readonly ended: Promise<LinkEnd>;
  private resolveEnded!: (end: LinkEnd) => void;
  private outcome: LinkEnd | undefined;
  private readonly ws: WebSocket;
  private readonly limits: LinkLimits;
  private connectTimer: TimerHandle | undefined;
  private keepaliveId = 0;
  /** The id of the keepalive awaiting its answer, and when it was sent. */
  private pendingKeepalive: { id: string; at: number } | undefined;
  private lastKeepaliveAt = 0;
  private lastError: string | undefined;
  private wasOpen = false;

  constructor(
    creds: LinkCredentials,
    private readonly opts: LinkOptions,
    private readonly events: LinkEvents,
  ) {
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    this.limits = opts.limits ?? LINK_LIMITS;
    const basic = Buffer.from(`${creds.uuid}.${creds.deviceId}:${creds.password}`).toString('base64');
    this.ws = new WebSocket(opts.url, {
      // Exactly MollySocket 1.7.1's headers, byte for byte (the quotes around OWA included): Signal sees one kind of
      // client whichever relay a user runs (docs/protocol.md says why nothing more is sent).
      headers: {
        Authorization: `Basic ${basic}`,
        'User-Agent': opts.userAgent,
        'X-Signal-Agent': '"OWA"',
      },
      // Frames are small; a compression context per socket would cost memory at scale.
      perMessageDeflate: false,
      maxPayload: this.limits.maxFrameBytes,
      ...(opts.ca && { secureContext: secureContextFor(opts.ca) }),
    });
    this.connectTimer = opts.clock.setTimeout(() => this.abort({ kind: 'timeout', phase: 'connect' }), opts.connectTimeoutMs);
    this.ws.on('unexpected-response', (_req, res) => {
      res.resume();
      const status = res.statusCode ?? 0;
      const header = res.headers['retry-after'];
      const retryAfterMs = parseRetryAfter(Array.isArray(header) ? header[0] : header, Date.now());
      this.abort(status === 403 ? { kind: 'forbidden' } : { kind: 'refused', status, ...(retryAfterMs !== undefined && { retryAfterMs }) });
    });
    this.ws.on('open', () => this.opened());
    this.ws.on('message', (data, isBinary) => {
      if (this.outcome !== undefined) return; // ending: frames already received are not answered
      if (isBinary) this.handleFrame(data as Buffer);
      else this.opts.log.debug('text frame from Signal skipped');
    });
    this.ws.on('error', (err: Error & { code?: string }) => {
      this.lastError = err.message;
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH')
        this.abort({ kind: 'closed', code: 1009, reason: `a frame over ${this.limits.maxFrameBytes} bytes` });
    });
    this.ws.on('close', (code, reason) =>
      this.finish(
        this.lastError !== undefined && !this.wasOpen ? { kind: 'error', message: this.lastError } : { kind: 'closed', code, reason: reason.toString() },
      ),
    );
  }

  /** Closes the session with 1000; `ended` resolves with `stopped`. */
  close(): void {
    this.outcome ??= { kind: 'stopped' };
    this.opts.clock.clearTimeout(this.connectTimer);
    if (this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate();
    } else if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.close(1000);
      this.opts.clock.setTimeout(() => this.ws.terminate(), CLOSE_GRACE_MS);
    }
  }

  private opened(): void {
    this.wasOpen = true;
    this.lastKeepaliveAt = this.opts.clock.now(); // the keepalive clock starts now, never while connecting
    this.opts.clock.clearTimeout(this.connectTimer);
    this.events.onOpen();
  }

  /** A keepalive was sent and its answer has not arrived yet. */
  get awaitingKeepalive(): boolean {
    return this.pendingKeepalive !== undefined;
  }

  /**
   * Called about every second by the supervisor for all open links at once (one timer for thousands of sockets
   * instead of two per keepalive): sends a keepalive when one is due, ends the session when one went unanswered.
   */
  tick(now: number): void {
    if (!this.wasOpen || this.outcome !== undefined) return;
    if (this.pendingKeepalive) {
      if (now - this.pendingKeepalive.at >= this.opts.keepaliveTimeoutMs) this.abort({ kind: 'timeout', phase: 'keepalive' });
      return;
    }
    if (now - this.lastKeepaliveAt < this.opts.keepaliveIntervalMs) return;
    this.lastKeepaliveAt = now;
    this.pendingKeepalive = { id: String(++this.keepaliveId), at: now };
    this.send(encodeRequest(this.pendingKeepalive.id, 'GET', '/v1/keepalive'));
  }

  /** Sends a frame, and ends the session once Signal leaves more than the bound unread (nothing else would stop it). */
  private send(frame: Uint8Array): void {
    this.ws.send(frame);
    if (this.ws.bufferedAmount > this.limits.maxUnsentBytes) {
      this.abort({ kind: 'closed', code: 1008, reason: `Signal left over ${this.limits.maxUnsentBytes} bytes of answers unread` });
    }
  }

  private handleFrame(data: Buffer): void {
    let frame;
    try {
      frame = decodeFrame(data);
    } catch (err) {
      this.opts.log.debug({ err }, 'malformed frame from Signal skipped');
      return;
    }
    if (frame.type === 'request') this.answer(frame.request);
    else if (frame.type === 'response' && frame.response.id === this.pendingKeepalive?.id) this.pendingKeepalive = undefined;
  }

  /** Every request gets an answer with its id, at once: an unanswered message is redelivered later. */
  private answer(req: Request): void {
    const isMessage = req.verb === 'PUT' && req.path === '/api/v1/message';
    const known = isMessage || (req.verb === 'PUT' && req.path === '/api/v1/queue/empty');
    this.send(known ? encodeResponse(req.id, 200, 'OK') : encodeResponse(req.id, 400, 'Bad Request'));
    if (!isMessage) return;
    let urgent = true; // an envelope we cannot read still deserves a wake-up: the phone fetches it itself
    try {
      urgent = isUrgentEnvelope(req.body);
    } catch {
      this.opts.log.debug('malformed envelope, treated as urgent');
    }
    this.events.onEnvelope(urgent);
  }

  private abort(end: LinkEnd): void {
    this.outcome ??= end;
    this.opts.clock.clearTimeout(this.connectTimer);
    this.ws.terminate();
  }

  private finish(fallback: LinkEnd): void {
    this.opts.clock.clearTimeout(this.connectTimer);
    this.resolveEnded(this.outcome ?? fallback);
  }
}

/** Signal's answer to a set of credentials: 101 accepted, 403 refused, anything else (or nothing) unreachable. */
export type SignalVerdict = 'accepted' | 'refused' | 'unreachable';

/**
 * Asks Signal whether it accepts credentials: one websocket upgrade, closed as soon as it opens, and answered then.
 * Nothing is acknowledged on it, so whatever Signal queued is delivered again to the real connection.
 */
export function askSignal(creds: LinkCredentials, opts: LinkOptions): Promise<SignalVerdict> {
  return new Promise((resolve) => {
    const link: SignalLink = new SignalLink(creds, opts, {
      onOpen: () => {
        resolve('accepted');
        link.close();
      },
      onEnvelope: () => {},
    });
    void link.ended.then((end) => resolve(end.kind === 'forbidden' ? 'refused' : 'unreachable')); // if not accepted
  });
}
