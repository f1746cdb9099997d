// The cluster benchmark's fake Signal chat server: TLS websockets with Basic auth for N accounts and keepalive
// answers, one port per relay process (so it knows which process holds each socket), keeping the newest socket of a
// device (the older one is closed with 4409), and recording for each device how long it went without a socket and
// whether two instances fought over it. Its own process (forked by cluster.mjs).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { WebSocketServer } from 'ws';
import { authenticate, WsMessage, now, serve } from './lib.mjs';

const accounts = new Map(JSON.parse(readFileSync(process.env.ACCOUNTS_FILE, 'utf8')).map((a) => [`${a.uuid}.${a.deviceId}`, a]));
const tls = { key: readFileSync(process.env.KEY_FILE), cert: readFileSync(process.env.CERT_FILE) };
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
/** device -> { sockets: [{ ws, tag }], noneSince, gaps: [], lastKick: Map<tag, { by, at }> } */
const devices = new Map();
let fights = 0;
let kicks = 0;
/** tag -> how many sockets Signal retired because another instance's socket of the device opened */
const kickedFrom = new Map();

function upgrade(tag, req, socket, head) {
  const auth = authenticate(accounts, req, socket);
  if (!auth) return;
  const { user, account } = auth;
  wss.handleUpgrade(req, socket, head, (ws) => {
    const d = devices.get(user) ?? { sockets: [], noneSince: undefined, gaps: [], lastKick: new Map() };
    devices.set(user, d);
    const at = now();
    if (d.noneSince !== undefined) d.gaps.push(at - d.noneSince);
    d.noneSince = undefined;
    for (const older of d.sockets) {
      // A fight: this instance's socket of the device was retired by the holder's within the last 10 s.
      const kicked = d.lastKick.get(tag);
      if (kicked && kicked.by === older.tag && at - kicked.at < 10_000) fights++;
      d.lastKick.set(older.tag, { by: tag, at });
      kicks++;
      kickedFrom.set(older.tag, (kickedFrom.get(older.tag) ?? 0) + 1);
      older.ws.close(4409);
    }
    const mine = { ws, tag };
    d.sockets = [...d.sockets, mine];
    ws.on('message', (data) => {
      const m = WsMessage.decode(data);
      if (m.type === 1) ws.send(WsMessage.encode(WsMessage.fromObject({ type: 2, response: { id: m.request.id, status: 200, message: 'OK' } })).finish());
    });
    ws.on('close', () => {
      d.sockets = d.sockets.filter((s) => s !== mine);
      if (d.sockets.length === 0) d.noneSince = now();
    });
  });
}

/** A listener for one relay process: `tag` names the process, so a restarted instance gets a new one. */
async function listen(tag) {
  const server = createServer(tls);
  server.on('upgrade', (req, socket, head) => upgrade(tag, req, socket, head));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server.address().port;
}

serve({
  listen: ({ tag }) => listen(tag),
  stats: () => {
    const t = now();
    const perTag = {};
    let open = 0;
    let withoutSocket = 0;
    let worstGapMs = 0;
    let doubled = 0;
    const gaps = [];
    for (const d of devices.values()) {
      if (d.sockets.length === 0) withoutSocket++;
      if (d.sockets.length > 1) doubled++;
      for (const s of d.sockets) perTag[s.tag] = (perTag[s.tag] ?? 0) + 1;
      open += d.sockets.length;
      const deviceGaps = [...d.gaps, ...(d.noneSince === undefined ? [] : [t - d.noneSince])];
      gaps.push(...deviceGaps);
      for (const g of deviceGaps) worstGapMs = Math.max(worstGapMs, g);
    }
    return {
      devices: devices.size,
      open,
      perTag,
      withoutSocket,
      doubled,
      worstGapMs,
      gapsCounted: gaps.length,
      fights,
      kicks,
      kickedFrom: Object.fromEntries(kickedFrom),
    };
  },
  /** Starts a new measuring window: forgets the gaps and kicks recorded so far. */
  reset: () => {
    for (const d of devices.values()) d.gaps = [];
    kicks = 0;
    kickedFrom.clear();
    return true;
  },
});

process.send({ ready: true });
