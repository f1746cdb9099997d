import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CLIENT_LIMITS, type ClientLimits } from '../../src/web/app.js';
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

async function listening(limits?: ClientLimits, trustProxy = false): Promise<{ url: string; port: number }> {
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
        expect((await instance.inject({ method, url: '/', headers: { host: 'a', 'x-forwarded-host': host } })).statusCode, `${method} forwarded ${host}`).toBe(400);
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

  it('checks X-Forwarded-Host like Host when proxies are trusted', async () => {
    const { url } = await listening(undefined, true);
    expect((await httpGet(`${url}/`, { Host: 'a', 'X-Forwarded-Host': 'b'.repeat(3_000) })).status).toBe(400);
  });
});
