// The cluster benchmark's fake Signal chat server, one process per relay process (forked by cluster.mjs with TAG
// naming the relay): TLS websockets with Basic auth for N accounts and keepalive answers. One process per relay, so
// that 30,000 sockets fit under a per-process descriptor limit (20,000 here) and the server knows which relay holds
// each socket. It reports every socket it opens and closes to cluster.mjs, whose ledger (bench/signal-ledger.mjs)
// keeps the newest socket of a device across all of them: it tells the process holding the older one to close it with
// 4409, as Signal does.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { WebSocketServer } from 'ws';
import { authenticate, WsMessage, now } from './lib.mjs';

const tag = process.env.TAG;
const accounts = new Map(JSON.parse(readFileSync(process.env.ACCOUNTS_FILE, 'utf8')).map((a) => [`${a.uuid}.${a.deviceId}`, a]));
const tls = { key: readFileSync(process.env.KEY_FILE), cert: readFileSync(process.env.CERT_FILE) };
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
/** socket id -> its websocket */
const sockets = new Map();
let nextId = 0;

const server = createServer(tls);
server.on('upgrade', (req, socket, head) => {
  const auth = authenticate(accounts, req, socket);
  if (!auth) return;
  wss.handleUpgrade(req, socket, head, (ws) => {
    const id = nextId++;
    sockets.set(id, ws);
    process.send({ ev: 'open', device: auth.user, tag, id, at: now() });
    ws.on('message', (data) => {
      const m = WsMessage.decode(data);
      if (m.type === 1) ws.send(WsMessage.encode(WsMessage.fromObject({ type: 2, response: { id: m.request.id, status: 200, message: 'OK' } })).finish());
    });
    ws.on('close', () => {
      sockets.delete(id);
      process.send({ ev: 'close', device: auth.user, tag, id, at: now() });
    });
  });
});

// The ledger: a newer socket of this device opened (here or at another relay's process): close this one.
process.on('message', (m) => {
  if (m.kick !== undefined) sockets.get(m.kick)?.close(4409, 'Connected elsewhere');
});

server.listen(0, '127.0.0.1', () => process.send({ ready: true, port: server.address().port }));
