import { createServer as createHttpsServer } from 'node:https';
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { mkdtempSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { WebSocketServer, type WebSocket } from 'ws';
import { EventWaiters } from './events.js';
import { testPki } from './tls.js';

/**
 * A fake Signal chat server: websocket upgrade with Basic auth (403 for bad credentials), envelopes sent as
 * server requests with their acks recorded, keepalive answers, and scripted misbehaviour. Its protobuf schema
 * is written here from Signal's definitions, independently of src/.
 */
const root = protobuf.parse(`
syntax = "proto2";
message WebSocketRequestMessage { optional string verb = 1; optional string path = 2; optional bytes body = 3;
  repeated string headers = 5; optional uint64 id = 4; }
message WebSocketResponseMessage { optional uint64 id = 1; optional uint32 status = 2; optional string message = 3;
  repeated string headers = 5; optional bytes body = 4; }
message WebSocketMessage { optional int32 type = 1; optional WebSocketRequestMessage request = 2;
  optional WebSocketResponseMessage response = 3; }
message Envelope { optional int32 type = 1; optional string sourceServiceId = 11; optional uint32 sourceDevice = 7;
  optional uint64 server_timestamp = 10; optional bytes content = 8; optional string serverGuid = 9;
  optional bool urgent = 14 [default = true]; optional bool story = 16; }
`).root;
const WsMessage = root.lookupType('WebSocketMessage');
const Envelope = root.lookupType('Envelope');

export interface Account {
  uuid: string;
  deviceId: number;
  password: string;
}

export interface Session {
  account: Account;
  /** The listener it came through (`listen(tag)`): which relay instance holds it. */
  tag: string;
  headers: IncomingMessage['headers'];
  ws: WebSocket;
  /** Requests the client sent (keepalives). */
  requests: { verb: string; path: string; id: string }[];
  /** Queued envelopes this session acknowledged (see `queue`). */
  acked: number;
}

/** An envelope Signal holds for a device until a socket of it acknowledges it (see `queue`, `deliver`). */
export interface QueuedEnvelope {
  device: string;
  /** When it was last sent to a socket (performance.now()), if it was. */
  sentAt: number | undefined;
  /** When a socket acknowledged it (200), if one did, and that socket's listener tag. */
  ackedAt: number | undefined;
  ackedBy?: string;
}

export interface EnvelopeOptions {
  /** undefined: the field is left out, which means urgent. */
  urgent?: boolean;
  story?: boolean;
}

/** A scripted answer to the next upgrade attempts, instead of accepting them. */
export interface UpgradeRefusal {
  /** 0: never answer (the client's connect timeout must end it). */
  status: number;
  headers?: Record<string, string>;
}

export class FakeSignalServer {
  readonly accounts = new Map<string, Account>();
  readonly sessions: Session[] = [];
  /** Every upgrade attempt, in order: the account it authenticated as (if any) and the status answered. */
  readonly upgrades: { uuid: string | undefined; status: number }[] = [];
  /** Answers to the next upgrades, consumed one per attempt. */
  readonly refusals: UpgradeRefusal[] = [];
  /** Envelopes not yet acknowledged, per account device (`<uuid>.<device>`), as Signal keeps them: sent to every
   * socket of the device that opens, and kept until a session acknowledges them. */
  readonly queued = new Map<string, number>();
  /** Every envelope given to `queue` or `deliver`, acknowledged or not. */
  readonly envelopes: QueuedEnvelope[] = [];
  /** When true, keepalive requests get no answer. */
  silentKeepalive = false;
  /** In order: `open <uuid>.<device>` and `close <uuid>.<device> <code>` (the code the client closed with). */
  readonly events: string[] = [];
  private readonly hung: Socket[] = [];
  private nextId = 1000n;
  private readonly pending = new Map<string, (r: { status: number; message: string }) => void>();
  private readonly waiters = new EventWaiters('fake Signal server');
  private readonly server: Server;
  private readonly extra: Server[] = [];
  /** Per device: how many sockets are open, since when none (after its first), its gaps without a socket, and how
   * long each gap lasted until the connection that ended it reached this server (before its TLS handshake). */
  private readonly devices = new Map<string, { open: number; noneSince: number | undefined; gaps: number[]; waits: number[] }>();
  /** When each client connection (by its port) reached a listener, before TLS: when the client tried. */
  private readonly arrivals = new Map<number, number>();
  /** Every 4409 this server sent: which listener's socket was replaced by which, when. */
  readonly kicks: { device: string; from: string; to: string; at: number }[] = [];
  /** Kicks back and forth: a socket opened by a listener whose socket of that device was replaced in the 10 s before. */
  fights = 0;
  private readonly wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

  private constructor(readonly tls: boolean) {
    this.server = this.listener('');
  }

  private listener(tag: string): Server {
    const pki = testPki();
    const server = this.tls ? createHttpsServer({ key: pki.key, cert: pki.cert }) : createHttpServer();
    server.on('upgrade', (req, socket, head) => this.upgrade(req, socket as Socket, head, tag));
    server.on('connection', (socket: Socket) => {
      const port = socket.remotePort!;
      this.arrivals.set(port, performance.now());
      socket.once('close', () => this.arrivals.delete(port));
    });
    return server;
  }

  /** Another port onto the same server, whose sessions carry `tag`: one per relay instance, to tell them apart. */
  async listen(tag: string): Promise<string> {
    const server = this.listener(tag);
    this.extra.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return `${this.tls ? 'wss' : 'ws'}://127.0.0.1:${port}/v1/websocket/`;
  }

  /**
   * The same server on a Unix socket (plain ws): the kernel holds some 200 KB of what a peer does not read there,
   * where TCP on loopback holds megabytes, so that a client's own backlog shows quickly.
   */
  async listenUnix(): Promise<string> {
    const server = this.tls ? createHttpServer().on('upgrade', (req, socket, head) => this.upgrade(req, socket as Socket, head, '')) : this.listener('');
    this.extra.push(server);
    const path = join(mkdtempSync(join(tmpdir(), 'fake-signal-')), 'socket');
    await new Promise<void>((resolve) => server.listen(path, resolve));
    return `ws+unix://${path}:/v1/websocket/`;
  }

  /** Forgets the gaps recorded so far (a device without a socket right now stays counted from when it lost it). */
  resetGaps(): void {
    for (const d of this.devices.values()) {
      d.gaps = [];
      d.waits = [];
    }
  }

  /**
   * The longest time any device went without a socket until an instance *tried* connecting it (its connection
   * reached this server): the gap less the handshake, which a loaded machine slows whatever the relay does. Gaps
   * still going count in full.
   */
  longestWait(): number {
    const now = performance.now();
    let worst = 0;
    for (const d of this.devices.values()) for (const w of [...d.waits, d.noneSince === undefined ? 0 : now - d.noneSince]) worst = Math.max(worst, w);
    return worst;
  }

  /** The longest time any device went without a socket (since `resetGaps`), gaps still going included. */
  longestGap(): number {
    return this.worstGap()[1];
  }

  /** The device that went longest without a socket, and for how long. */
  worstGap(): [string, number] {
    const now = performance.now();
    let worst: [string, number] = ['', 0];
    for (const [name, d] of this.devices) {
      for (const g of [...d.gaps, d.noneSince === undefined ? 0 : now - d.noneSince]) if (g > worst[1]) worst = [name, g];
    }
    return worst;
  }

  /** Open sockets per device (every device that ever had one). */
  openPerDevice(): Map<string, number> {
    return new Map([...this.devices].map(([k, d]) => [k, d.open]));
  }

  /** Open sockets per listener tag. */
  openPerTag(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const s of this.sessions) if (s.ws.readyState === s.ws.OPEN) counts.set(s.tag, (counts.get(s.tag) ?? 0) + 1);
    return counts;
  }

  private opened(account: Account, tag: string, arrivedAt: number): void {
    const name = `${account.uuid}.${account.deviceId}`;
    const d = this.devices.get(name) ?? { open: 0, noneSince: undefined, gaps: [], waits: [] };
    this.devices.set(name, d);
    if (d.noneSince !== undefined) {
      d.gaps.push(performance.now() - d.noneSince);
      d.waits.push(Math.max(0, arrivedAt - d.noneSince));
    }
    d.noneSince = undefined;
    d.open++;
    const now = performance.now();
    for (const older of this.open(account.uuid, account.deviceId)) {
      if (this.kicks.some((k) => k.device === name && k.from === tag && k.to === older.tag && now - k.at < 10_000)) this.fights++;
      this.kicks.push({ device: name, from: older.tag, to: tag, at: now });
    }
  }

  private closed(name: string): void {
    const d = this.devices.get(name);
    if (!d) return; // removed meanwhile
    d.open--;
    if (d.open === 0) d.noneSince = performance.now();
  }

  static async start(opts: { tls?: boolean } = {}): Promise<FakeSignalServer> {
    const fake = new FakeSignalServer(opts.tls ?? true);
    await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve));
    return fake;
  }

  get url(): string {
    const { port } = this.server.address() as AddressInfo;
    return `${this.tls ? 'wss' : 'ws'}://127.0.0.1:${port}/v1/websocket/`;
  }

  addAccount(account: Account): void {
    this.accounts.set(`${account.uuid}.${account.deviceId}`, account);
  }

  /** Signal no longer knows the device: its sockets are refused, and its gaps no longer count. */
  removeAccount(account: Pick<Account, 'uuid' | 'deviceId'>): void {
    this.accounts.delete(`${account.uuid}.${account.deviceId}`);
    this.devices.delete(`${account.uuid}.${account.deviceId}`);
  }

  /** Queues envelopes for an account device, delivered on its next connection (see `queued`). */
  queue(account: Pick<Account, 'uuid' | 'deviceId'>, count = 1): QueuedEnvelope[] {
    const device = `${account.uuid}.${account.deviceId}`;
    const added = Array.from({ length: count }, (): QueuedEnvelope => ({ device, sentAt: undefined, ackedAt: undefined }));
    this.envelopes.push(...added);
    this.queued.set(device, (this.queued.get(device) ?? 0) + count);
    return added;
  }

  /** An envelope for an account device, as Signal delivers one: now to its open socket, if any, else (or if that
   * socket goes away before acknowledging it) to its next socket. */
  deliver(account: Pick<Account, 'uuid' | 'deviceId'>): QueuedEnvelope {
    const [envelope] = this.queue(account) as [QueuedEnvelope];
    const session = this.open(account.uuid, account.deviceId).at(-1);
    if (session) this.sendQueued(session, envelope);
    return envelope;
  }

  /** The server closes a socket (with 1011, as Signal does when it restarts a node). */
  drop(session: Session, code = 1011): void {
    session.ws.close(code, 'Server going away');
  }

  private sendQueued(session: Session, envelope: QueuedEnvelope): void {
    envelope.sentAt = performance.now();
    void this.sendEnvelope(session).then((answer) => {
      if (answer.status !== 200 || envelope.ackedAt !== undefined) return;
      envelope.ackedAt = performance.now();
      envelope.ackedBy = session.tag;
      session.acked++;
      this.queued.set(envelope.device, (this.queued.get(envelope.device) ?? 1) - 1);
      this.notify();
    });
  }

  /** Open sessions of an account device. */
  open(uuid: string, deviceId = 1): Session[] {
    return this.sessions.filter((s) => s.account.uuid === uuid && s.account.deviceId === deviceId && s.ws.readyState === s.ws.OPEN);
  }

  /** Resolves when `predicate` holds, checked after every event of the server. */
  until(predicate: () => boolean, what = 'condition', timeoutMs = 20_000): Promise<void> {
    return this.waiters.until(predicate, what, timeoutMs);
  }

  /** Sends `PUT /api/v1/message` with an Envelope; resolves with the client's response. */
  sendEnvelope(session: Session, opts: EnvelopeOptions = {}): Promise<{ status: number; message: string }> {
    const envelope: Record<string, unknown> = { type: 1, serverTimestamp: Date.now(), content: Buffer.from('opaque') };
    if (opts.urgent !== undefined) envelope.urgent = opts.urgent;
    if (opts.story !== undefined) envelope.story = opts.story;
    return this.request(session, 'PUT', '/api/v1/message', Envelope.encode(Envelope.fromObject(envelope)).finish());
  }

  request(session: Session, verb: string, path: string, body?: Uint8Array): Promise<{ status: number; message: string }> {
    const id = String(this.nextId++);
    const frame = WsMessage.encode(WsMessage.fromObject({ type: 1, request: { verb, path, id, ...(body && { body }) } })).finish();
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      session.ws.send(frame);
    });
  }

  /** Sends raw bytes as one binary frame (for malformed-frame tests). */
  sendRaw(session: Session, data: Uint8Array): void {
    session.ws.send(data);
  }

  /** Sends `count` requests at once without waiting for their answers (`PUT /api/v1/queue/empty`, answered 200). */
  flood(session: Session, count: number): Promise<void> {
    return new Promise((resolve) => {
      for (let i = 0; i < count; i++) {
        const frame = WsMessage.encode(
          WsMessage.fromObject({ type: 1, request: { verb: 'PUT', path: '/api/v1/queue/empty', id: String(this.nextId++) } }),
        ).finish();
        // Settles once the last frame is handed to the socket, or the client closed it: the caller paces itself on
        // real progress.
        session.ws.send(frame, i === count - 1 ? () => resolve() : undefined);
      }
    });
  }

  /** Stops reading what the client sends on this session: its answers pile up on the client's side. */
  stopReading(session: Session): void {
    (session.ws as unknown as { _socket: Socket })._socket.pause();
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.ws.terminate();
    for (const socket of this.hung) socket.destroy();
    for (const server of [this.server, ...this.extra]) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections?.();
    }
  }

  private notify(): void {
    this.waiters.notify();
  }

  private upgrade(req: IncomingMessage, socket: Socket, head: Buffer, tag: string): void {
    const refuse = (status: number, headers: Record<string, string> = {}, uuid?: string): void => {
      this.upgrades.push({ uuid, status });
      const lines = Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('');
      socket.end(`HTTP/1.1 ${status} Refused\r\n${lines}Content-Length: 0\r\nConnection: close\r\n\r\n`);
      this.notify();
    };
    const match = /^Basic (.+)$/.exec(req.headers.authorization ?? '');
    const [user, password] = match
      ? Buffer.from(match[1] as string, 'base64')
          .toString()
          .split(/:(.*)/s)
      : [];
    const [uuid, device] = (user ?? '').split('.');
    const refusal = this.refusals.shift();
    if (refusal?.status === 0) {
      this.upgrades.push({ uuid, status: 0 });
      this.hung.push(socket);
      this.notify();
      return;
    }
    if (refusal) return refuse(refusal.status, refusal.headers, uuid);
    const account = this.accounts.get(`${uuid}.${device}`);
    if (!account || account.password !== password) return refuse(403, {}, uuid);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      this.upgrades.push({ uuid, status: 101 });
      const name = `${account.uuid}.${account.deviceId}`;
      this.opened(account, tag, this.arrivals.get(socket.remotePort!) ?? performance.now());
      // As Signal does: the newest socket of a device wins, the older one is closed with 4409.
      for (const older of this.open(account.uuid, account.deviceId)) older.ws.close(4409, 'Connected elsewhere');
      const session: Session = { account, tag, headers: req.headers, ws, requests: [], acked: 0 };
      this.sessions.push(session);
      this.events.push(`open ${name}`);
      ws.on('message', (data) => this.onFrame(session, data as Buffer));
      ws.on('close', (code) => {
        this.closed(name);
        this.events.push(`close ${name} ${code}`);
        this.notify();
      });
      for (const envelope of this.envelopes) if (envelope.device === name && envelope.ackedAt === undefined) this.sendQueued(session, envelope);
      this.notify();
    });
  }

  private onFrame(session: Session, data: Buffer): void {
    const msg = WsMessage.toObject(WsMessage.decode(data), { longs: String }) as {
      type?: number;
      request?: { verb: string; path: string; id: string };
      response?: { id: string; status: number; message: string };
    };
    if (msg.type === 1 && msg.request) {
      session.requests.push(msg.request);
      if (msg.request.path === '/v1/keepalive' && !this.silentKeepalive) {
        session.ws.send(WsMessage.encode(WsMessage.fromObject({ type: 2, response: { id: msg.request.id, status: 200, message: 'OK' } })).finish());
      }
    } else if (msg.type === 2 && msg.response) {
      this.pending.get(msg.response.id)?.({ status: msg.response.status, message: msg.response.message });
      this.pending.delete(msg.response.id);
    }
    this.notify();
  }
}
