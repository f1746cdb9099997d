import { Server as HttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import {
  constants,
  createServer as createHttp2Server,
  type Http2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type ServerHttp2Session,
} from 'node:http2';
import type { Socket } from 'node:net';
import { clientKey, ConnectionsPerClient } from './limits.js';

/** The HTTP/2 connection preface (RFC 9113 section 3.4): a client with prior knowledge sends it first. */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * The protocol of a connection by its first bytes: `h2` once they are the HTTP/2 preface, `h1` as soon as they
 * cannot be its start (no HTTP/1 request begins with `PRI *`), undefined while they still may be. Pure.
 */
export function protocolOf(first: Buffer): 'h1' | 'h2' | undefined {
  const n = Math.min(first.length, PREFACE.length);
  if (!first.subarray(0, n).equals(PREFACE.subarray(0, n))) return 'h1';
  return n === PREFACE.length ? 'h2' : undefined;
}

/** What bounds every connection, whichever protocol it speaks. */
export interface ListenerLimits {
  /** A request (headers and body) must arrive within this; also the time to send the first bytes. */
  requestTimeoutMs: number;
  /** A connection (an HTTP/2 session) with nothing going on is closed after this. */
  idleTimeoutMs: number;
  maxConnections: number;
  checkIntervalMs: number;
  maxConnectionsPerClient: number;
}

export type Handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => void;

/**
 * Streams one HTTP/2 session may carry at once: a reverse proxy multiplexes its clients on a few sessions, and opens
 * another when one is full. With pages of about 10 KB, 32 answers unread by a client fit in the memory a session
 * may hold (1 MB, where Node's default is 10): a client that reads nothing holds little more than over HTTP/1.1.
 */
const MAX_STREAMS_PER_SESSION = 32;
const MAX_SESSION_MEMORY_MB = 1;

/**
 * One listening socket for HTTP/1.1 and HTTP/2 cleartext with prior knowledge (h2c, what Caddy's
 * `reverse_proxy h2c://` speaks): Node's own `allowHTTP1` needs TLS. Each accepted connection is counted against its
 * client's bound (trusted proxies excepted), then its first bytes choose the server it goes to; both call the same
 * handler. To Fastify it is an http.Server (listen, close, closeIdleConnections).
 */
export class DualProtocolServer extends HttpServer {
  private readonly h2: Http2Server;
  private readonly sessions = new Set<ServerHttp2Session>();
  private readonly perClient: ConnectionsPerClient;

  constructor(
    handler: Handler,
    limits: ListenerLimits,
    /** Peers not bound per client: trusted reverse proxies, which carry many clients. */
    private readonly unbounded: (address: string) => boolean,
    /** A connection refused because its client holds its maximum. */
    private readonly onRefused: (address: string) => void = () => {},
  ) {
    super({ headersTimeout: limits.requestTimeoutMs, requestTimeout: limits.requestTimeoutMs, connectionsCheckingInterval: limits.checkIntervalMs }, handler);
    this.keepAliveTimeout = limits.idleTimeoutMs; // Node's 5 s, or Fastify's own 72 s, otherwise
    this.setTimeout(limits.idleTimeoutMs);
    this.maxConnections = limits.maxConnections;
    this.perClient = new ConnectionsPerClient(limits.maxConnectionsPerClient);

    this.h2 = createHttp2Server(
      { settings: { maxConcurrentStreams: MAX_STREAMS_PER_SESSION, maxHeaderListSize: 16 * 1024 }, maxSessionMemory: MAX_SESSION_MEMORY_MB },
      handler,
    );
    this.h2.setTimeout(limits.idleTimeoutMs); // an idle session is closed
    this.h2.on('session', (session: ServerHttp2Session) => {
      this.sessions.add(session);
      session.once('close', () => this.sessions.delete(session));
    });
    // As HTTP/1's requestTimeout: a request must have arrived, body and all, in time.
    this.h2.on('stream', (stream) => {
      if (stream.endAfterHeaders) return; // no body: the request has arrived whole
      const deadline = setTimeout(() => stream.close(constants.NGHTTP2_CANCEL), limits.requestTimeoutMs);
      const received = (): void => clearTimeout(deadline);
      stream.once('end', received);
      stream.once('close', received);
    });

    const http1 = this.listeners('connection') as ((socket: Socket) => void)[];
    this.removeAllListeners('connection');
    this.on('connection', (socket: Socket) => this.accept(socket, limits.requestTimeoutMs, http1));
  }

  private accept(socket: Socket, firstBytesTimeoutMs: number, http1: ((socket: Socket) => void)[]): void {
    const address = socket.remoteAddress ?? '';
    if (!this.unbounded(address)) {
      const key = clientKey(address);
      if (!this.perClient.tryOpen(key)) {
        socket.destroy();
        this.onRefused(address);
        return;
      }
      socket.once('close', () => this.perClient.close(key));
    }
    let first = Buffer.alloc(0);
    const failed = (): void => void socket.destroy();
    const silent = setTimeout(failed, firstBytesTimeoutMs).unref();
    socket.once('close', () => clearTimeout(silent));
    const onData = (chunk: Buffer): void => {
      first = Buffer.concat([first, chunk]);
      const protocol = protocolOf(first);
      if (protocol === undefined) return;
      clearTimeout(silent);
      socket.off('data', onData).off('error', failed);
      socket.pause();
      socket.unshift(first); // read again by the server it goes to
      if (protocol === 'h2') {
        this.h2.emit('connection', socket);
      } else {
        for (const listener of http1) listener.call(this, socket);
        socket.resume(); // the first bytes, then whatever follows, to the HTTP/1 parser
      }
    };
    socket.on('data', onData).on('error', failed);
  }

  /** As http.Server's, and every HTTP/2 session finishes its streams and closes. */
  override close(callback?: (err?: Error) => void): this {
    for (const session of this.sessions) session.close();
    return super.close(callback);
  }

  override closeIdleConnections(): void {
    super.closeIdleConnections();
    for (const session of this.sessions) session.close(); // graceful: a session with streams under way finishes them
  }
}
