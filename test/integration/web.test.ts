import { createHash } from 'node:crypto';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';
import { buildOpsApp, MAX_ENDPOINT_LENGTH, serverUrl, type Ops, type WebDeps } from '../../src/web/app.js';
import { TEST_VAPID } from '../helpers/index.js';
import { linkIn, testApp } from '../helpers/web.js';

const PUB = TEST_VAPID.pub;

const valid = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', device_id: 1, password: 'p', endpoint: 'https://e.example/x' };

const counts = { connecting: 1, connected: 3, backoff: 2, forbidden: 1 };

function ops(over: Partial<Ops> = {}, metrics = new Metrics(() => counts)): Ops {
  return {
    version: '9.9.9',
    counts: () => ({ total: 7, ...counts }),
    storeHealthy: async () => true,
    metrics: () => metrics.registry.metrics(),
    metricsContentType: metrics.registry.contentType,
    ...over,
  };
}

const app = (over: Partial<WebDeps> = {}) => testApp({ ops: ops(), ...over });

describe('the URL in the link', () => {
  const req = (headers: Record<string, string>, url = '/') => ({ headers, url });
  const plain = { publicUrl: undefined, viaTrustedProxy: false };
  const proxied = { publicUrl: undefined, viaTrustedProxy: true };

  it('is https, the Host header and the request path, as MollySocket derives it', () => {
    expect(serverUrl(req({ host: 'push.example' }, '/?airgapped'), plain)).toEqual({ url: 'https://push.example/', unusable: [] });
    expect(serverUrl(req({ host: 'push.example:8443' }), plain).url).toBe('https://push.example:8443/');
  });

  it('takes the path of X-Original-URL from a reverse proxy', () => {
    expect(serverUrl(req({ host: 'example.org', 'x-original-url': '/molly/?x=1' }), plain).url).toBe('https://example.org/molly/');
    expect(serverUrl(req({ host: 'example.org', 'x-original-url': '/a,b/' }), plain).url).toBe('https://example.org/a,b/');
  });

  it("keeps the page's own host: X-Original-URL counts only when it is a path", () => {
    for (const [original, proxy] of [
      ['x:@evil.example/', plain],
      ['x:.evil.example/', plain],
      ['https://evil.example/', plain],
      ['//[', plain],
      ['x:@evil.example/', proxied],
    ] as const) {
      const got = serverUrl(req({ host: 'molly.example.org', 'x-original-url': original }), proxy);
      expect(got, original).toEqual({ url: 'https://molly.example.org/', unusable: ['X-Original-URL'] });
      expect(new URL(got.url).host).toBe('molly.example.org');
    }
    expect(serverUrl(req({ host: 'molly.example.org', 'x-original-url': '//evil.example/x' }), plain).url).toBe('https://molly.example.org/x');
  });

  it('prefers the url setting', () => {
    expect(serverUrl(req({ host: 'internal:8020' }), { publicUrl: 'https://example.org/molly/', viaTrustedProxy: false }).url).toBe(
      'https://example.org/molly/',
    );
  });

  it('believes X-Forwarded-Host/Prefix only through a trusted proxy, the entry of the nearest one', () => {
    const headers = { host: 'internal:8020', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'example.org', 'x-forwarded-prefix': '/molly/' };
    expect(serverUrl(req(headers), proxied)).toEqual({ url: 'https://example.org/molly/', unusable: [] });
    expect(serverUrl(req(headers), plain).url).toBe('https://internal:8020/');
    expect(serverUrl(req({ host: 'a.example', 'x-forwarded-host': 'spoofed.example, b.example' }), proxied).url).toBe('https://b.example/');
  });

  it('validates forwarded values the same way: https only, plain hosts, paths', () => {
    const got = serverUrl(req({ host: 'molly.example.org', 'x-forwarded-proto': 'javascript', 'x-forwarded-prefix': '@evil.example' }), proxied);
    expect(got).toEqual({ url: 'https://molly.example.org/', unusable: ['X-Forwarded-Proto', 'X-Forwarded-Prefix'] });
    expect(serverUrl(req({ host: 'molly.example.org', 'x-forwarded-proto': 'http' }), proxied).url).toBe('https://molly.example.org/');
  });
});

describe('proxies and the rate limit', () => {
  const post = (instance: Awaited<ReturnType<typeof app>>['instance'], remoteAddress: string, xff?: string) =>
    instance.inject({ method: 'POST', url: '/', remoteAddress, payload: valid, ...(xff !== undefined && { headers: { 'x-forwarded-for': xff } }) });
  const statuses = async (n: number, send: (i: number) => Promise<{ statusCode: number }>) => {
    const codes: number[] = [];
    for (let i = 0; i < n; i++) codes.push((await send(i)).statusCode);
    return { ok: codes.filter((c) => c === 200).length, limited: codes.filter((c) => c === 429).length };
  };

  it('trust_proxy = true trusts one hop: a spoofed leftmost X-Forwarded-For does not pick the bucket', async () => {
    const { instance } = await app({ trustProxy: true });
    // The proxy at 127.0.0.1 appended the address it saw (198.51.100.7) to what the client wrote.
    expect(await statuses(200, (i) => post(instance, '127.0.0.1', `10.9.${i >> 8}.${i & 255}, 198.51.100.7`))).toEqual({ ok: 120, limited: 80 });
    expect((await post(instance, '127.0.0.1', '198.51.100.8')).statusCode).toBe(200); // another phone
  });

  it('a number trusts that many hops, a list the named proxies only', async () => {
    const two = (await app({ trustProxy: 2, rateLimitPerMinute: 2 })).instance;
    expect(await statuses(3, (i) => post(two, '127.0.0.1', `10.0.0.${i}, 198.51.100.7, 10.1.1.1`))).toEqual({ ok: 2, limited: 1 });
    const listed = (await app({ trustProxy: ['10.1.1.1'], rateLimitPerMinute: 2 })).instance;
    expect(await statuses(3, (i) => post(listed, '10.1.1.1', `10.0.0.${i}, 198.51.100.7`))).toEqual({ ok: 2, limited: 1 });
    // A client that is not the listed proxy is its own address, whatever it writes.
    expect(await statuses(3, (i) => post(listed, '198.51.100.9', `198.51.100.${i}`))).toEqual({ ok: 2, limited: 1 });
  });

  it('without trust_proxy, never puts every phone behind a proxy in one bucket: local peers are not limited', async () => {
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    const { instance } = await app({ rateLimitPerMinute: 2, log });
    expect(lines.filter((l) => /set trust_proxy to limit per phone/.test(l))).toHaveLength(1);
    for (const peer of ['127.0.0.1', '::1', '10.0.0.2', '172.17.0.1', '::ffff:192.168.1.1']) {
      expect(await statuses(5, () => post(instance, peer, '198.51.100.7')), peer).toEqual({ ok: 5, limited: 0 });
    }
    expect(await statuses(3, () => post(instance, '198.51.100.7'))).toEqual({ ok: 2, limited: 1 });
  });

  it("answers 400 for a Host, or a trusted proxy's X-Forwarded-Host, that is not a plain host", async () => {
    const { instance } = await app({ trustProxy: true });
    const page = (headers: Record<string, string>) => instance.inject({ url: '/', remoteAddress: '127.0.0.1', headers });
    expect((await page({ host: 'x@evil.example' })).statusCode).toBe(400);
    expect((await page({ host: 'molly.example.org', 'x-forwarded-host': 'molly.example.org, evil.example/x?' })).statusCode).toBe(400);
    expect((await page({ host: 'molly.example.org', 'x-forwarded-host': 'evil.example/x?, molly.example.org' })).statusCode).toBe(200); // the nearest proxy's
  });

  it('says on the page when a proxy header was not usable', async () => {
    const { instance } = await app();
    const page = await instance.inject({ url: '/', headers: { host: 'molly.example.org', 'x-original-url': 'x:@evil.example/' } });
    expect(linkIn(page.body).searchParams.get('url')).toBe('https://molly.example.org/');
    expect(page.body).toMatch(/id="header-warning"[^>]*>The reverse proxy sent X-Original-URL, which could not be used/);
    const clean = await instance.inject({ url: '/', headers: { host: 'molly.example.org' } });
    expect(clean.body).not.toContain('header-warning');
  });
});

describe('web routes', () => {
  it('answers Molly and health checks with the version JSON, browsers with the homepage', async () => {
    const { instance } = await app();
    const molly = await instance.inject({ url: '/', headers: { 'user-agent': 'Signal-Android/7.20.0 Molly' } });
    expect(molly.json()).toEqual({ mollysocket: { version: '9.9.9' } });
    expect((await instance.inject({ url: '/discover' })).json()).toEqual({ mollysocket: { version: '9.9.9' } });
    const page = await instance.inject({ url: '/', headers: { 'user-agent': 'Mozilla/5.0', host: 'push.example' } });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    const link = linkIn(page.body);
    expect(link.toString()).toBe(`mollysocket://link?vapid=${PUB}&url=https%3A%2F%2Fpush.example%2F&type=webserver`);
    expect(page.body).toContain('<svg');
    expect(page.body).toContain('9.9.9');
    expect(page.body).toContain('href="?airgapped"');
    expect(page.body).toContain('data-link-url="https://push.example/"');
  });

  it('says, without JavaScript, when the link points to an address a phone cannot reach', async () => {
    const { instance } = await app();
    const page = async (host: string) => (await instance.inject({ url: '/', headers: { 'user-agent': 'Mozilla/5.0', host } })).body;
    for (const host of ['127.0.0.1:8020', 'localhost:8020', '192.168.1.20:8020', '10.0.0.5', '[::1]:8020', '[fd00::1]']) {
      const body = await page(host);
      const warning = /<p id="reach-warning" class="warning">([\s\S]*?)<\/p>/.exec(body);
      expect(warning?.[1], host).toContain(`<b>${host}</b>, an address a phone cannot reach`);
      expect(warning?.[1]).toMatch(/public https name .* or set <code>url<\/code>/);
    }
    for (const host of ['push.example', 'molly.example.org:8443', '203.0.114.7']) expect(await page(host), host).not.toContain('reach-warning');
    expect((await instance.inject({ url: '/?airgapped', headers: { host: '127.0.0.1:8020' } })).body).not.toContain('reach-warning');
  });

  it('shows the air-gapped link on ?airgapped', async () => {
    const { instance } = await app();
    const page = await instance.inject({ url: '/?airgapped', headers: { host: 'push.example' } });
    const link = linkIn(page.body);
    expect(link.searchParams.get('type')).toBe('airgapped');
    expect(link.searchParams.has('url')).toBe(false);
    expect(page.body).toContain('connection add');
    expect(page.body).toContain('data-link-url=""');
  });

  it("sends security headers, with a CSP that allows only the page's own script and style", async () => {
    const { instance } = await app();
    const page = await instance.inject({ url: '/', headers: { host: 'push.example' } });
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    expect(page.headers['referrer-policy']).toBe('no-referrer');
    const csp = String(page.headers['content-security-policy']);
    const hash = (tag: string) => {
      const body = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(page.body)![1]!;
      return `'sha256-${createHash('sha256').update(body).digest('base64')}'`;
    };
    expect(csp).toContain(`script-src ${hash('script')}`);
    expect(csp).toContain(`style-src ${hash('style')}`);
    expect(csp).toContain("default-src 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(page.headers['strict-transport-security']).toBeUndefined();
  });

  it('passes a registration to the decision table and wraps its status', async () => {
    const { instance, seen } = await app();
    const res = await instance.inject({
      method: 'POST',
      url: '/',
      headers: { 'content-type': 'application/json; charset=utf-8' },
      payload: { ...valid, ping: true },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ mollysocket: { version: '9.9.9', status: 'ok' } });
    expect(seen).toEqual([{ uuid: valid.uuid, deviceId: 1, password: 'p', endpoint: valid.endpoint, ping: true }]);
  });

  it('answers malformed input with 4xx and a JSON error, never a 5xx', async () => {
    const { instance, seen } = await app();
    const post = (payload: string, type = 'application/json') => instance.inject({ method: 'POST', url: '/', headers: { 'content-type': type }, payload });
    for (const bad of [
      '{',
      '[]',
      'null',
      JSON.stringify({ ...valid, device_id: 0 }),
      JSON.stringify({ ...valid, device_id: 2 ** 31 }),
      JSON.stringify({ ...valid, device_id: '1' }),
      JSON.stringify({ ...valid, device_id: 1.5 }),
      JSON.stringify({ ...valid, password: '' }),
      JSON.stringify({ ...valid, password: 'x'.repeat(257) }),
      JSON.stringify({ ...valid, uuid: 'x'.repeat(65) }),
      JSON.stringify({ ...valid, ping: 'yes' }),
      JSON.stringify({ uuid: valid.uuid }),
    ]) {
      const res = await post(bad);
      expect(res.statusCode, bad.slice(0, 80)).toBe(400);
      expect(res.json()).toHaveProperty('error');
    }
    expect((await post('uuid=x', 'application/x-www-form-urlencoded')).statusCode).toBe(415);
    expect((await post(JSON.stringify(valid), 'text/plain')).statusCode).toBe(415);
    expect((await post(JSON.stringify({ ...valid, password: 'x'.repeat(10 * 1024 * 1024) }))).statusCode).toBe(413);
    expect((await post(JSON.stringify({ ...valid, password: 'x'.repeat(17 * 1024) }))).statusCode).toBe(413);
    expect(seen).toEqual([]);
  });

  it('takes endpoints as long as a distributor hands out, and answers longer ones with a status Molly shows', async () => {
    const { instance, seen } = await app();
    const post = (endpoint: string) => instance.inject({ method: 'POST', url: '/', payload: { ...valid, endpoint } });
    const long = `https://e.example/${'x'.repeat(4_096)}`;
    const res = await post(long);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ mollysocket: { version: '9.9.9', status: 'ok' } });
    expect(seen.map((r) => r.endpoint)).toEqual([long]);
    const over = await post(`https://e.example/${'x'.repeat(MAX_ENDPOINT_LENGTH)}`);
    expect(over.statusCode).toBe(200);
    expect(over.json()).toEqual({ mollysocket: { version: '9.9.9', status: 'invalid_endpoint' } });
    expect(seen).toHaveLength(1);
  });

  it('refuses text no database stores as sent (NUL, lone surrogates) with 400 before it reaches the store', async () => {
    const { instance, seen } = await app();
    for (const bad of [
      { uuid: `${valid.uuid}\u0000` },
      { password: 'p\u0000w' },
      { endpoint: 'https://e.example/\u0000' },
      { password: 'p\ud800w' },
      { endpoint: 'https://e.example/\udfff' },
    ]) {
      const payload = JSON.stringify({ ...valid, ...bad }); // escaped as JSON sends them: \u0000, \ud800
      const res = await instance.inject({ method: 'POST', url: '/', headers: { 'content-type': 'application/json' }, payload });
      expect(res.statusCode, payload).toBe(400);
    }
    expect(seen).toEqual([]);
    expect((await instance.inject({ method: 'POST', url: '/', payload: { ...valid, password: 'p😀w' } })).statusCode).toBe(200); // a pair is fine
  });

  it('limits registrations per client address, generously', async () => {
    const { instance } = await app({ rateLimitPerMinute: 5 });
    const post = (ip: string) => instance.inject({ method: 'POST', url: '/', remoteAddress: ip, payload: valid });
    for (let i = 0; i < 5; i++) expect((await post('192.0.2.1')).statusCode).toBe(200);
    const limited = await post('192.0.2.1');
    expect(limited.statusCode).toBe(429);
    expect(limited.headers['retry-after']).toBeDefined();
    expect((await post('192.0.2.2')).statusCode).toBe(200);
    expect((await instance.inject({ url: '/', remoteAddress: '192.0.2.1' })).statusCode).toBe(200); // only registrations count
  });

  it('answers unknown routes with 404', async () => {
    const { instance } = await app();
    expect((await instance.inject({ url: '/nope' })).statusCode).toBe(404);
  });
});

describe('health and metrics', () => {
  it('reports counts only, and 503 when the store is unusable', async () => {
    const { instance } = await app();
    const res = await instance.inject({ url: '/health' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ok', version: '9.9.9', connections: { total: 7, connected: 3, connecting: 1, backoff: 2, forbidden: 1 } });
    const broken = await app({ ops: ops({ storeHealthy: async () => false }) });
    const down = await broken.instance.inject({ url: '/health' });
    expect(down.statusCode).toBe(503);
    expect(down.json()).toMatchObject({ status: 'store_unavailable' });
  });

  it('serves the MollySocket metric names with no per-account label', async () => {
    const { instance } = await app();
    await instance.inject({ method: 'POST', url: '/', payload: valid });
    const res = await instance.inject({ url: '/metrics' });
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    // mollysocket_connections counts every connection whose loop runs: connecting, connected and in backoff.
    for (const name of [
      'mollysocket_connections 6',
      'mollysocket_forbiddens 1',
      'mollysocket_reconnections 0',
      'mollysocket_messages 0',
      'mollysocket_pushs 0',
    ]) {
      expect(res.body).toContain(`\n${name}\n`);
    }
    expect(res.body).toContain('# TYPE mollysocket_pushs counter');
    expect(res.body).toContain('# TYPE mollysocket_connections gauge');
    expect(res.body).toContain('# TYPE mollysocket_push_duration_seconds histogram');
    expect(res.body).not.toContain(valid.uuid);
    expect(res.body).not.toContain('e.example');
  });

  it("counts requests as MollySocket's Rocket fairing does: rocket_http_requests_* by route, method and status", async () => {
    const metrics = new Metrics(() => counts);
    const { instance } = await app({ ops: ops({}, metrics), httpMetrics: metrics });
    await instance.inject({ url: '/', headers: { 'user-agent': 'Signal-Android/8.3.4 Molly' } });
    await instance.inject({ url: '/?airgapped', headers: { 'user-agent': 'Mozilla/5.0', host: 'push.example' } });
    await instance.inject({ url: '/discover' });
    await instance.inject({ method: 'POST', url: '/', payload: valid });
    await instance.inject({ method: 'POST', url: '/', payload: { uuid: 1 } });
    await instance.inject({ url: '/nope' }); // matches no route: not counted, as in Rocket
    await instance.inject({ url: '/metrics' });
    const body = (await instance.inject({ url: '/metrics' })).body;
    expect(body).toContain('# TYPE rocket_http_requests_total counter');
    expect(body).toContain('# HELP rocket_http_requests_total Total number of HTTP requests');
    expect(body).toContain('\nrocket_http_requests_total{endpoint="/",method="GET",status="200"} 2\n');
    expect(body).toContain('\nrocket_http_requests_total{endpoint="/discover",method="GET",status="200"} 1\n');
    expect(body).toContain('\nrocket_http_requests_total{endpoint="/",method="POST",status="200"} 1\n');
    expect(body).toContain('\nrocket_http_requests_total{endpoint="/",method="POST",status="400"} 1\n');
    expect(body).toContain('\nrocket_http_requests_total{endpoint="/metrics",method="GET",status="200"} 1\n');
    expect(body).not.toContain('/nope');
    expect(body).toContain('# TYPE rocket_http_requests_duration_seconds histogram');
    // The Prometheus default buckets, as rocket_prometheus uses them.
    const buckets = [...body.matchAll(/rocket_http_requests_duration_seconds_bucket\{le="([^"]+)",endpoint="\/discover",method="GET",status="200"\} 1/g)].map(
      (m) => m[1],
    );
    expect(buckets).toEqual(['0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1', '2.5', '5', '10', '+Inf']);
    expect(body).toMatch(/\nrocket_http_requests_duration_seconds_count\{endpoint="\/discover",method="GET",status="200"\} 1\n/);
  });

  it('moves health and metrics to their own listener when metrics_port is set', async () => {
    const { instance } = await app({ ops: undefined });
    expect((await instance.inject({ url: '/health' })).statusCode).toBe(404);
    expect((await instance.inject({ url: '/metrics' })).statusCode).toBe(404);
    const opsApp = buildOpsApp(ops(), pino({ level: 'silent' }));
    expect((await opsApp.inject({ url: '/health' })).statusCode).toBe(200);
    expect((await opsApp.inject({ url: '/metrics' })).body).toContain('mollysocket_pushs');
    expect((await opsApp.inject({ url: '/' })).statusCode).toBe(404);
  });
});
