// A fake Signal chat server for load: TLS websockets with Basic auth for N accounts, keepalive answers,
// envelopes sent on command. Runs in its own process (forked by run.mjs).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { WebSocketServer } from 'ws';
import { authenticate, Envelope, WsMessage, now, serve } from './lib.mjs';

const accounts = new Map(JSON.parse(readFileSync(process.env.ACCOUNTS_FILE, 'utf8')).map((a) => [`${a.uuid}.${a.deviceId}`, a]));
const server = createServer({ key: readFileSync(process.env.KEY_FILE), cert: readFileSync(process.env.CERT_FILE) });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const sessions = new Map(); // uuid -> ws
let nextId = 1;
let acked = 0;
const body = Envelope.encode(Envelope.fromObject({ type: 1, serverTimestamp: 1, content: Buffer.alloc(200) })).finish();

server.on('upgrade', (req, socket, head) => {
  const account = authenticate(accounts, req, socket)?.account;
  if (!account) return;
  wss.handleUpgrade(req, socket, head, (ws) => {
    sessions.get(account.uuid)?.close(4409);
    sessions.set(account.uuid, ws);
    ws.on('message', (data) => {
      const m = WsMessage.decode(data);
      if (m.type === 1) ws.send(WsMessage.encode(WsMessage.fromObject({ type: 2, response: { id: m.request.id, status: 200, message: 'OK' } })).finish());
      else if (m.type === 2) acked++;
    });
    ws.on('close', () => sessions.get(account.uuid) === ws && sessions.delete(account.uuid));
  });
});

function sendEnvelope(ws) {
  const frame = WsMessage.encode(WsMessage.fromObject({ type: 1, request: { verb: 'PUT', path: '/api/v1/message', id: nextId++, body } })).finish();
  ws.send(frame);
}

serve({
  stats: () => ({ open: sessions.size, acked }),
  /** Closes `count` open sockets as a restarting Signal server would (1011); the client reconnects. */
  kick: ({ count }) => {
    const open = [...sessions.values()];
    for (let i = 0; i < Math.min(count, open.length); i++) open[Math.floor(Math.random() * open.length)].close(1011, 'restart');
    return true;
  },
  /** One envelope to each open account in turn, `rate` per second; returns when each account was sent to. */
  steady: async ({ rate, count }) => {
    const targets = [...sessions.entries()].slice(0, count);
    const sent = [];
    const start = now();
    for (let i = 0; i < targets.length; i++) {
      const due = start + (i * 1000) / rate;
      while (now() < due) await new Promise((r) => setTimeout(r, Math.max(0, due - now())));
      const [uuid, ws] = targets[i];
      sent.push({ uuid, at: now() });
      sendEnvelope(ws);
    }
    return sent;
  },
  /** `count` envelopes as fast as the sockets take them, spread over the accounts; resolves when all are acked. */
  blast: async ({ count }) => {
    const targets = [...sessions.values()];
    const before = acked;
    const start = now();
    for (let i = 0; i < count; i++) {
      const ws = targets[i % targets.length];
      if (ws.bufferedAmount > 1 << 20) await new Promise((r) => setImmediate(r));
      sendEnvelope(ws);
      if (i % 500 === 0) await new Promise((r) => setImmediate(r));
    }
    while (acked - before < count) await new Promise((r) => setTimeout(r, 5));
    return { seconds: (now() - start) / 1000 };
  },
});

server.listen(0, '127.0.0.1', () => process.send({ ready: true, port: server.address().port }));
