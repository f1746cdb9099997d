// Shared pieces of the benchmark processes: the wire format, /proc readings, small helpers.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import protobuf from 'protobufjs';

const root = protobuf.parse(`
syntax = "proto2";
message WebSocketRequestMessage { optional string verb = 1; optional string path = 2; optional bytes body = 3; optional uint64 id = 4; }
message WebSocketResponseMessage { optional uint64 id = 1; optional uint32 status = 2; optional string message = 3; }
message WebSocketMessage { optional int32 type = 1; optional WebSocketRequestMessage request = 2; optional WebSocketResponseMessage response = 3; }
message Envelope { optional int32 type = 1; optional uint64 server_timestamp = 10; optional bytes content = 8; optional bool urgent = 14 [default = true]; }
`).root;
export const WsMessage = root.lookupType('WebSocketMessage');
export const Envelope = root.lookupType('Envelope');

/** Milliseconds since the epoch, with sub-millisecond resolution, comparable between processes. */
export const now = () => performance.timeOrigin + performance.now();

/** Resident memory of a process, in bytes. */
export function rss(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

/** CPU time (user + system) a process has used, in seconds. */
export function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (100 Hz)
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function until(predicate, what, timeoutMs, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** A CA and a certificate for 127.0.0.1 that it signed, made once per work directory. */
export function pki(dir) {
  mkdirSync(dir, { recursive: true });
  const f = (n) => join(dir, n);
  if (!existsSync(f('server.pem'))) {
    const ssl = (...a) => execFileSync('openssl', a, { stdio: 'pipe' });
    ssl(
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      f('ca.key'),
      '-out',
      f('ca.pem'),
      '-days',
      '2',
      '-subj',
      '/CN=bench CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign',
    );
    ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
    writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n');
    ssl(
      'x509',
      '-req',
      '-in',
      f('server.csr'),
      '-CA',
      f('ca.pem'),
      '-CAkey',
      f('ca.key'),
      '-CAcreateserial',
      '-out',
      f('server.pem'),
      '-days',
      '2',
      '-extfile',
      f('ext.cnf'),
    );
  }
  return { caFile: f('ca.pem'), keyFile: f('server.key'), certFile: f('server.pem') };
}

/** Forked children answer {id, cmd, ...} messages with {id, result}. */
export function rpc(child) {
  let next = 0;
  const waiting = new Map();
  child.on('message', (m) => {
    if (m && m.id !== undefined && waiting.has(m.id)) {
      waiting.get(m.id)(m.result);
      waiting.delete(m.id);
    }
  });
  return (cmd, args = {}) =>
    new Promise((resolve) => {
      const id = next++;
      waiting.set(id, resolve);
      child.send({ id, cmd, ...args });
    });
}

export function serve(handlers) {
  process.on('message', async (m) => {
    const result = await handlers[m.cmd](m);
    process.send({ id: m.id, result });
  });
}

/**
 * The account a websocket upgrade authenticates as (Basic `<uuid>.<device>:<password>`), or undefined after answering
 * 403 on the socket, as Signal does for unknown credentials.
 */
export function authenticate(accounts, req, socket) {
  const basic = /^Basic (.+)$/.exec(req.headers.authorization ?? '');
  const [user, password] = basic ? Buffer.from(basic[1], 'base64').toString().split(/:(.*)/s) : [];
  const account = accounts.get(user);
  if (account && account.password === password) return { user, account };
  socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
  return undefined;
}

/**
 * A Signal server that accepts every credential (a socket stays open until the relay closes it) and a push server
 * that accepts every push, on loopback: for benchmarks of the relay's own work.
 */
export async function acceptingServers() {
  const { createServer } = await import('node:http');
  const { WebSocketServer } = await import('ws');
  const signal = createServer();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  signal.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => ws.on('error', () => {})));
  const push = createServer((req, res) => req.resume().on('end', () => res.writeHead(201).end()));
  await Promise.all([signal, push].map((s) => new Promise((r) => s.listen(0, '127.0.0.1', r))));
  return {
    signalUrl: `ws://127.0.0.1:${signal.address().port}/v1/websocket/`,
    pushOrigin: `http://127.0.0.1:${push.address().port}`,
    close: () => [wss, signal, push].forEach((s) => s.close()),
  };
}

/** A loopback port free at the moment of asking, for a relay that is given its port. */
export const freePort = async () => {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
};
