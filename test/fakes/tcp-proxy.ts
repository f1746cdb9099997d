import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy on loopback in front of one server (PostgreSQL, or one listener of the fake Signal server), to make a
 * link misbehave the way networks do: answers that arrive late (`delayMs`), a partition that stalls both ways without
 * a reset (`cut`, then `heal`), a route that is gone (`reset` and `refuse`). Bytes are never lost or reordered.
 */
export class TcpProxy {
  /** Added to every chunk going from the server to the client (a slow link: answers arrive this much later). */
  delayMs = 0;
  /** New connections are reset at once (with `reset()`: the route is gone, the host unreachable). */
  refuse = false;
  private stalled = false;
  private readonly links = new Set<Link>();

  private constructor(
    private readonly server: Server,
    private readonly target: { host: string; port: number },
  ) {
    server.on('connection', (client) => this.accept(client));
  }

  static async start(target: { host?: string; port: number }): Promise<TcpProxy> {
    const proxy = new TcpProxy(createServer({ pauseOnConnect: true }), { host: target.host ?? '127.0.0.1', port: target.port });
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  /** A proxy in front of the server a URL names; `url` is the same URL through the proxy. */
  static async before(target: string): Promise<{ proxy: TcpProxy; url: string }> {
    const u = new URL(target);
    const proxy = await TcpProxy.start({ host: u.hostname, port: Number(u.port) });
    u.port = String(proxy.port);
    return { proxy, url: u.toString() };
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Connections open through the proxy now. */
  get connections(): number {
    return this.links.size;
  }

  /** A partition: nothing passes either way, new connections hang; the kernel buffers what is written meanwhile. */
  cut(): void {
    this.stalled = true;
    for (const link of this.links) link.pause();
  }

  /** The partition ends: whatever was held back flows on, in order. */
  heal(): void {
    this.stalled = false;
    for (const link of this.links) link.resume();
  }

  /** Resets every connection through the proxy now (both ends see the connection end at once). */
  reset(): void {
    for (const link of this.links) link.destroy();
  }

  async close(): Promise<void> {
    this.reset();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    if (this.refuse) {
      client.resetAndDestroy();
      return;
    }
    const link = new Link(
      client,
      this.target,
      () => this.delayMs,
      () => this.links.delete(link),
    );
    this.links.add(link);
    if (!this.stalled) link.resume();
  }
}

/** One client connection and its connection to the server. */
class Link {
  private readonly upstream: Socket;
  /** Server-to-client chunks waiting for their time (`delayMs` after they arrived), in order. */
  private readonly late: { at: number; chunk: Buffer }[] = [];
  private lateTimer: NodeJS.Timeout | undefined;
  private upstreamEnded = false;
  private paused = true;
  private closed = false;

  constructor(
    private readonly client: Socket,
    target: { host: string; port: number },
    private readonly delayMs: () => number,
    private readonly onClose: () => void,
  ) {
    this.upstream = connect(target);
    this.upstream.pause();
    client.on('data', (chunk: Buffer) => {
      if (!this.upstream.write(chunk)) client.pause();
    });
    this.upstream.on('drain', () => !this.paused && client.resume());
    this.upstream.on('data', (chunk: Buffer) => {
      const delay = this.delayMs();
      if (delay <= 0 && this.late.length === 0) return void this.toClient(chunk);
      const at = Math.max(performance.now() + delay, this.late.at(-1)?.at ?? 0);
      this.late.push({ at, chunk });
      this.flushLate();
    });
    client.on('drain', () => !this.paused && this.upstream.resume());
    this.upstream.on('end', () => {
      this.upstreamEnded = true;
      this.flushLate();
    });
    client.on('end', () => this.upstream.end());
    client.on('error', () => this.destroy());
    client.on('close', () => this.destroy());
    this.upstream.on('error', () => this.destroy());
    // A server that closed cleanly: the client still gets what is held back, then the end (see flushLate).
    this.upstream.on('close', (hadError) => hadError && this.destroy());
  }

  private toClient(chunk: Buffer): void {
    if (!this.client.write(chunk)) this.upstream.pause();
  }

  /** Sends the late chunks whose time has come, and waits for the next one. */
  private flushLate(): void {
    if (this.lateTimer !== undefined || this.paused) return;
    const now = performance.now();
    while (this.late.length > 0 && this.late[0]!.at <= now) this.toClient(this.late.shift()!.chunk);
    if (this.late.length > 0) {
      this.lateTimer = setTimeout(() => {
        this.lateTimer = undefined;
        this.flushLate();
      }, this.late[0]!.at - now);
    } else if (this.upstreamEnded) this.client.end();
  }

  pause(): void {
    this.paused = true;
    this.client.pause();
    this.upstream.pause();
    clearTimeout(this.lateTimer);
    this.lateTimer = undefined;
  }

  resume(): void {
    this.paused = false;
    this.client.resume();
    this.upstream.resume();
    this.flushLate();
  }

  /** Ends both connections at once, with a reset. */
  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.lateTimer);
    for (const s of [this.client, this.upstream]) if (!s.destroyed) s.resetAndDestroy();
    this.onClose();
  }
}
