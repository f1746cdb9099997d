import { request } from 'node:http';
import http2, { type ClientHttp2Session } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { CLIENT_LIMITS, type ClientLimits, type WebDeps } from '../../src/web/app.js';
import { eventually, httpGet, memoryLogger } from '../helpers/index.js';
import { linkIn, testApp } from '../helpers/web.js';

/** What strangers can send to the listening web server: slow bodies, many connections, hostile headers. */

const fast: ClientLimits = { ...CLIENT_LIMITS, requestTimeoutMs: 500, idleTimeoutMs: 2_000, maxConnections: 20, checkIntervalMs: 100 };

let closeApp: (() => Promise<void>) | undefined;
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await closeApp?.();
  closeApp = undefined;
});

async function listening(limits?: ClientLimits, trustProxy: WebDeps['trustProxy'] = false): Promise<{ url: string; port: number }> {
  const { instance } = await testApp({ trustProxy, rateLimitPerMinute: 0, ...(limits && { limits }) });
  const url = await instance.listen({ host: '127.0.0.1', port: 0 });
  closeApp = () => instance.close();
  return { url, port: Number(new URL(url).port) };
}

/** A client that connects and tracks whether the server closed its connection. */
function client(port: number): { socket: Socket; ended: boolean } {
  const socket = connect(port, '127.0.0.1');
  const c = { socket, ended: false };
  socket.on('error', () => {});
  socket.on('close', () => (c.ended = true));
  sockets.push(socket);
  return c;
}

describe('slow and many clients', () => {
  it('closes requests whose body trickles in, once their time is over', async () => {
    const { port } = await listening(fast);
    const trickling = Array.from({ length: 50 }, () => client(port));
    for (const c of trickling) c.socket.write('POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{');
    const timer = setInterval(() => trickling.forEach((c) => !c.ended && c.socket.write(' ')), 100); // one byte at a time
    try {
      await eventually(() => trickling.every((c) => c.ended), 'every trickling request closed', 5_000);
    } finally {
      clearInterval(timer);
    }
  });

  it('keeps at most maxConnections open at once', async () => {
    const { port } = await listening(fast);
    const many = Array.from({ length: 30 }, () => client(port));
    await eventually(() => many.filter((c) => c.ended).length === 10, 'the connections over the bound refused', 5_000);
    expect(many.filter((c) => !c.ended)).toHaveLength(20);
  });
});

describe('one client cannot take every connection', () => {
  const bounded: ClientLimits = { ...fast, maxConnectionsPerClient: 5 };

  /** A GET from a chosen loopback address, on a connection of its own. */
  const getFrom = (port: number, localAddress: string, path = '/discover'): Promise<number> =>
    new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, localAddress, agent: false }, (res) => (res.resume(), resolve(res.statusCode ?? 0)));
      req.on('error', reject).end();
    });

  it('refuses a client over its bound while a bystander at another address is answered', async () => {
    const { port } = await listening(bounded);
    // One address opens as many connections as the whole server takes: each sends one request, then idles.
    const hog = Array.from({ length: fast.maxConnections }, () => client(port));
    for (const c of hog) c.socket.write('GET /discover HTTP/1.1\r\nHost: a\r\n\r\n');
    await eventually(() => hog.filter((c) => c.ended).length === fast.maxConnections - 5, 'the connections over its bound refused', 5_000);
    expect(await getFrom(port, '127.0.0.2')).toBe(200);
    await expect(getFrom(port, '127.0.0.1')).rejects.toThrow(); // the hog's next one is refused
    hog.filter((c) => !c.ended)[0]!.socket.destroy(); // one place given back, one more connection for it
    await eventually(async () => (await getFrom(port, '127.0.0.1').catch(() => 0)) === 200, 'a place freed');
  });

  it('does not bound a trusted proxy, which carries many clients', async () => {
    const { port } = await listening(bounded, ['127.0.0.1']);
    const many = Array.from({ length: 10 }, () => client(port));
    for (const c of many) c.socket.write('GET /discover HTTP/1.1\r\nHost: a\r\n\r\n');
    await eventually(async () => (await getFrom(port, '127.0.0.1')) === 200, 'an eleventh connection answered');
    expect(many.filter((c) => c.ended)).toEqual([]);
  });

  it("closes an idle kept-alive connection after the idle timeout (not Fastify's 72 s)", async () => {
    const { port } = await listening({ ...fast, idleTimeoutMs: 300 });
    const idle = client(port);
    let answer = '';
    idle.socket.on('data', (d: Buffer) => (answer += d.toString()));
    idle.socket.write('GET /discover HTTP/1.1\r\nHost: a\r\n\r\n');
    await eventually(() => idle.ended, 'the idle connection closed', 15_000, 50);
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
  });
});

describe('HTTP/2 with prior knowledge (h2c), on the same port as HTTP/1.1', () => {
  const sessions: ClientHttp2Session[] = [];
  afterEach(() => sessions.splice(0).forEach((s) => s.destroy()));
  const h2 = (url: string, opts: { localAddress?: string } = {}): ClientHttp2Session => {
    const session = http2.connect(url, {
      ...(opts.localAddress && { createConnection: () => connect({ port: Number(new URL(url).port), host: '127.0.0.1', localAddress: opts.localAddress }) }),
    });
    session.on('error', () => {});
    sessions.push(session);
    return session;
  };
  const ask = (session: ClientHttp2Session, headers: Record<string, string>, body?: string) =>
    new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
      const stream = session.request(headers);
      let text = '';
      let head: Record<string, unknown> = {};
      stream.on('response', (h) => (head = h));
      stream.setEncoding('utf8').on('data', (d: string) => (text += d));
      stream.on('end', () => resolve({ status: Number(head[':status']), headers: head, body: text }));
      stream.on('error', reject);
      stream.end(body);
    });

  it('serves the same routes, headers and answers as HTTP/1.1', async () => {
    const warnings: Error[] = [];
    const warned = (w: Error) => warnings.push(w);
    process.on('warning', warned);
    onTestFinished(() => void process.off('warning', warned));
    const { url } = await listening();
    const session = h2(url);
    const discover = await ask(session, { ':path': '/discover' });
    expect(discover.status).toBe(200);
    expect(JSON.parse(discover.body)).toEqual({ mollysocket: { version: '9.9.9' } });
    const page = await ask(session, { ':path': '/', ':authority': 'molly.example.org', 'x-original-url': '/molly/' });
    expect(page.status).toBe(200);
    expect(linkIn(page.body).searchParams.get('url')).toBe('https://molly.example.org/molly/');
    const h1 = await httpGet(`${url}/`, { Host: 'molly.example.org', 'X-Original-URL': '/molly/' });
    expect(page.body).toBe(h1.body);
    expect(page.headers['content-security-policy']).toBe(h1.headers['content-security-policy']);
    const registration = JSON.stringify({ uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', device_id: 1, password: 'p', endpoint: 'https://e.example/x' });
    const post = await ask(session, { ':path': '/', ':method': 'POST', 'content-type': 'application/json' }, registration);
    expect(JSON.parse(post.body)).toEqual({ mollysocket: { version: '9.9.9', status: 'ok' } });
    expect((await ask(session, { ':path': '/', ':authority': 'a:99999' })).status).toBe(400);
    expect((await ask(session, { ':path': '/', ':method': 'POST', 'content-type': 'application/json' }, 'x'.repeat(20_000))).status).toBe(413);
    expect((await ask(session, { ':path': '/nope' })).status).toBe(404);
    expect((await ask(session, { ':path': '/', ':method': 'POST', 'content-type': 'application/json' }, '{')).status).toBe(400);
    await new Promise((r) => setImmediate(r));
    expect(warnings.map((w) => w.message)).toEqual([]); // no Connection header sent over HTTP/2
  });

  it('believes forwarded headers only as trust_proxy says, and limits registrations per phone behind the proxy', async () => {
    const { instance } = await testApp({ trustProxy: true, rateLimitPerMinute: 2 });
    const url = await instance.listen({ host: '127.0.0.1', port: 0 });
    closeApp = () => instance.close();
    const session = h2(url);
    const page = await ask(session, { ':path': '/', ':authority': 'internal:8020', 'x-forwarded-host': 'public.example', 'x-forwarded-prefix': '/molly' });
    expect(linkIn(page.body).searchParams.get('url')).toBe('https://public.example/molly/');
    const registration = JSON.stringify({ uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', device_id: 1, password: 'p', endpoint: 'https://e.example/x' });
    const post = (phone: string) =>
      ask(session, { ':path': '/', ':method': 'POST', 'content-type': 'application/json', 'x-forwarded-for': phone }, registration);
    const statuses = [];
    for (const phone of ['198.51.100.1', '198.51.100.1', '198.51.100.1', '198.51.100.2']) statuses.push((await post(phone)).status);
    expect(statuses).toEqual([200, 200, 429, 200]);
  });

  it("counts sessions against the client's bound and closes idle ones", async () => {
    const { url } = await listening({ ...fast, maxConnectionsPerClient: 2, idleTimeoutMs: 300 });
    const [a, b, c] = [h2(url), h2(url), h2(url)];
    const answered = await Promise.allSettled([a, b, c].map((s) => ask(s, { ':path': '/discover' })));
    expect(answered.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
    expect((await ask(h2(url, { localAddress: '127.0.0.2' }), { ':path': '/discover' })).status).toBe(200);
    await eventually(() => a.closed && b.closed, 'idle sessions closed', 15_000, 50);
  });

  it('cuts a request whose body does not arrive in time, as over HTTP/1.1', async () => {
    const { url } = await listening({ ...fast, idleTimeoutMs: 60_000 }); // the session's own idle timeout does not end it
    const session = h2(url);
    const stream = session.request({ ':path': '/', ':method': 'POST', 'content-type': 'application/json', 'content-length': '1000' });
    stream.on('error', () => {});
    stream.write('{');
    let closed = false;
    stream.on('close', () => (closed = true));
    await eventually(() => closed, 'the stalled stream closed', 15_000, 20);
    expect((await ask(session, { ':path': '/discover' })).status).toBe(200); // the session itself goes on
  });

  it('tells the protocols apart however the first bytes are split', async () => {
    const { port } = await listening();
    const c = client(port);
    let answer = '';
    c.socket.on('data', (d: Buffer) => (answer += d.toString()));
    // "P" could start the HTTP/2 preface: the server waits for more, then hands every byte to HTTP/1.1.
    for (const piece of ['P', 'OST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n', '{', '}']) {
      c.socket.write(piece);
      await new Promise((r) => setImmediate(r));
    }
    await eventually(() => answer.includes('\r\n\r\n'), 'an answer');
    expect(answer).toMatch(/^HTTP\/1\.1 400 /); // parsed as HTTP/1.1: {} lacks the fields
  });
});

describe('hostile headers on the homepage', () => {
  it('answers 400, never 500, for an oversized or malformed Host, and an X-Original-URL that makes no link', async () => {
    const { url } = await listening();
    expect((await httpGet(`${url}/`, { Host: 'a'.repeat(3_000) })).status).toBe(400);
    expect((await httpGet(`${url}/`, { Host: 'molly.example.org/<script>' })).status).toBe(400);
    expect((await httpGet(`${url}/`, { Host: 'molly.example.org', 'X-Original-URL': `/${'p'.repeat(3_000)}` })).status).toBe(400);
    expect((await httpGet(`${url}/`, { Host: 'molly.example.org', 'X-Original-URL': '//[' })).status).toBeLessThan(500);
    const fine = await httpGet(`${url}/`, { Host: 'molly.example.org:8443' });
    expect(fine.status).toBe(200);
    expect(linkIn(fine.body).searchParams.get('url')).toBe('https://molly.example.org:8443/');
  });

  it('answers 400 and logs nothing at the default level for a Host that looks like a host but makes no URL, GET or HEAD, direct or forwarded', async () => {
    const { log, lines } = memoryLogger();
    log.level = 'error';
    const { instance } = await testApp({ log, trustProxy: true });
    const hosts = ['a:99999', 'a:65536', '[1]', '[:::]', '[1.2.3.4]', '[::1::2]', '[.]'];
    for (const host of hosts) {
      for (const method of ['GET', 'HEAD'] as const) {
        expect((await instance.inject({ method, url: '/', headers: { host } })).statusCode, `${method} ${host}`).toBe(400);
        expect((await instance.inject({ method, url: '/', headers: { host: 'a', 'x-forwarded-host': host } })).statusCode, `${method} forwarded ${host}`).toBe(
          400,
        );
      }
    }
    expect(lines()).toEqual([]);
    expect((await instance.inject({ url: '/', headers: { host: '[::1]:8443' } })).statusCode).toBe(200);
  });

  it('draws a fresh page (a QR code) for one client only so often: inventing hosts or paths buys 429, not CPU', async () => {
    const { instance } = await testApp({ limits: { ...CLIENT_LIMITS, freshPagesPerMinute: 5 } });
    const get = (remoteAddress: string, headers: Record<string, string>) => instance.inject({ url: '/', remoteAddress, headers });
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await get('203.0.113.7', { host: `h${i}.example` })).statusCode);
    for (let i = 0; i < 3; i++) statuses.push((await get('203.0.113.7', { host: 'h0.example', 'x-original-url': `/p${i}/` })).statusCode);
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 429]);
    const refused = await get('203.0.113.7', { host: 'h9.example' });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
    expect((await get('203.0.113.7', { host: 'h1.example' })).statusCode).toBe(200); // a page already drawn is served
    expect((await get('2001:db8:1:2::7', { host: 'h9.example' })).statusCode).toBe(200); // a bystander
    for (let i = 0; i < 4; i++) await get(`2001:db8:1:2::${i + 10}`, { host: `v${i}.example` });
    expect((await get('2001:db8:1:2::99', { host: 'v9.example' })).statusCode).toBe(429); // one /64 is one client
    expect((await get('2001:db8:1:3::1', { host: 'v9.example' })).statusCode).toBe(200);
  });

  it('never answers 500 to Host, X-Forwarded-* and X-Original-URL values built from the characters that matter', async () => {
    const { log, lines } = memoryLogger();
    log.level = 'error';
    const { instance } = await testApp({ log, trustProxy: true });
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31; // the same cases every run
    const pick = (alphabet: string, max: number) =>
      Array.from({ length: Math.floor(random() * max) }, () => alphabet[Math.floor(random() * alphabet.length)]).join('');
    const HOSTISH = 'a1.:[]%-_@/\\?#f0:';
    const oneOf = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
    const NAMES = ['a', 'a.b', '1', '1.2.3.4', '[1]', '[::1]', '[:::]', '[1.2.3.4]', '[::1::2]', '[.]', '[f::]', '', 'a..b', '_'];
    const PORTS = ['', ':', ':0', ':8443', ':65535', ':65536', ':99999', ':a'];
    const hostish = (): string => (random() < 0.6 ? `${oneOf(NAMES)}${oneOf(PORTS)}` : pick(HOSTISH, 14));
    const seen = new Set<number>();
    for (let i = 0; i < 600; i++) {
      const headers = {
        host: hostish() || 'a',
        ...(random() < 0.5 && { 'x-forwarded-host': hostish() }),
        ...(random() < 0.3 && { 'x-forwarded-prefix': pick('/a%.:@?#[]', 10) }),
        ...(random() < 0.3 && { 'x-forwarded-proto': pick('https:/', 8) }),
        ...(random() < 0.5 && { 'x-original-url': pick('/a%.:@?#[]\\', 12) }),
      };
      const method = random() < 0.5 ? 'GET' : 'HEAD';
      const res = await instance.inject({ method, url: random() < 0.2 ? '/?airgapped' : '/', headers, remoteAddress: `10.0.${i >> 8}.${i & 255}` });
      seen.add(res.statusCode);
      expect(res.statusCode, JSON.stringify(headers)).toBeLessThan(500);
    }
    expect([...seen].sort()).toEqual([200, 400]);
    expect(lines()).toEqual([]);
  });

  it('checks X-Forwarded-Host like Host when proxies are trusted', async () => {
    const { url } = await listening(undefined, true);
    expect((await httpGet(`${url}/`, { Host: 'a', 'X-Forwarded-Host': 'b'.repeat(3_000) })).status).toBe(400);
  });
});
