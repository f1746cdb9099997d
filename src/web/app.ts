import proxyAddr from '@fastify/proxy-addr';
import helmet from '@fastify/helmet';
import rateLimit from '@fastify/rate-limit';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { isLocalNetworkAddress } from '../addresses.js';
import type { Config } from '../config.js';
import { LRUCache } from 'lru-cache';
import { linkUrl, qrSvg } from '../link.js';
import type { Logger } from '../log.js';
import type { HttpMetrics } from '../metrics.js';
import type { Registrations } from '../registrations.js';
import { HOME_HASHES, renderHome } from './home.js';
import { clientKey, FreshPagesPerClient } from './limits.js';
import { DualProtocolServer, type Handler } from './listener.js';

/** What /health and /metrics report. */
export interface Ops {
  version: string;
  counts(): { total: number; connected: number; connecting: number; backoff: number; forbidden: number };
  /** False when the database cannot be read, its file was deleted or replaced, or writes to it are failing. */
  storeHealthy(): Promise<boolean>;
  /** Several instances: this one's id, how many devices it owns, how many instances are live. */
  cluster?(): { instance?: string; owned?: number; liveInstances?: number };
  metrics(): Promise<string>;
  metricsContentType: string;
}

export interface WebDeps {
  registrations: Registrations;
  vapidPublicKey: string;
  version: string;
  log: Logger;
  /** `url`: the public URL, for proxies that pass no usable headers. */
  publicUrl: string | undefined;
  /** `trust_proxy`: which hops' X-Forwarded-* headers to believe (the client address in X-Forwarded-For included). */
  trustProxy: Config['trust_proxy'];
  /** Registrations per minute per client address; 0: no limit. */
  rateLimitPerMinute: number;
  /** Health and metrics on this listener; undefined when a separate listener serves them. */
  ops: Ops | undefined;
  /** Counts every answered request (`rocket_http_requests_*`), wherever /metrics is served. */
  httpMetrics?: HttpMetrics;
  /** Bounds on clients (tests shorten them). */
  limits?: ClientLimits;
}

/** What one client may hold: slow or many clients cannot pile up. */
export interface ClientLimits {
  /** A request's headers and body must arrive within this. */
  requestTimeoutMs: number;
  /** A connection with nothing going on is closed after this. */
  idleTimeoutMs: number;
  /** Connections open at once; more are refused. */
  maxConnections: number;
  /** How often Node looks for requests over their time. */
  checkIntervalMs: number;
  /** Connections one client (an IPv4 address, an IPv6 /64) may hold open; trusted proxies (`trust_proxy`) are not bound. */
  maxConnectionsPerClient: number;
  /** Pages one client may have drawn afresh (not from the cache) per minute. */
  freshPagesPerMinute: number;
}

export const CLIENT_LIMITS: ClientLimits = {
  requestTimeoutMs: 10_000,
  idleTimeoutMs: 30_000,
  maxConnections: 1024,
  checkIntervalMs: 1_000,
  // A phone or browser needs a handful at a time; 1024 / 64 = 16 clients holding their maximum still leave room.
  maxConnectionsPerClient: 64,
  // A visitor sees one or two links (web server, air-gapped); a stranger inventing hosts gets 429 after ten.
  freshPagesPerMinute: 10,
};

/** A host name or IP literal with an optional port, as a Host header must be; anything else is refused (400). */
const HOST_HEADER = /^(?:[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?$/i;
const MAX_HOST_LENGTH = 261; // 253 for the name, a port
/** Far more than a real link needs, and a QR code that stays cheap to draw and easy to scan. */
const MAX_LINK_LENGTH = 1_000;
/** A host name or IP literal with an optional port that makes a URL (`a:99999` and `[1.2.3.4]` look like one but do not). */
const isValidHost = (host: string | undefined): boolean =>
  host === undefined || (host.length <= MAX_HOST_LENGTH && HOST_HEADER.test(host) && URL.canParse(`https://${host}/`));

type Headers = Record<string, string | string[] | undefined>;
/** proxy-addr's trust function: whether the address `hop` steps from this server is a proxy to believe. */
type Trust = (address: string, hop: number) => boolean;

/**
 * `trust_proxy` as fastify's trustProxy function: true is one hop (the nearest proxy's view of the client), a
 * number that many, a list the proxies' addresses (proxy-addr). Undefined: believe no forwarded header.
 */
export function proxyTrust(setting: Config['trust_proxy']): Trust | undefined {
  if (setting === false || setting === 0) return undefined;
  if (typeof setting === 'object') return proxyAddr.compile([...setting]); // the proxies' addresses
  const hops = setting === true ? 1 : setting;
  return (_address, hop) => hop < hops;
}

const single = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? value[0] : value)?.trim() || undefined;
/** The entry the nearest proxy wrote: the last of a comma-separated list (earlier ones may come from the client). */
const nearest = (value: string | string[] | undefined): string | undefined => single(value)?.split(',').pop()?.trim() || undefined;

const PATH_RE = /^\/[\w\-.~!$&'()*+,;=:@%/]*$/;

export interface ServerUrl {
  url: string;
  /** Headers that were sent but could not be used for the link, for the page to say so. */
  unusable: string[];
}

/**
 * The server URL Molly must store (docs/protocol.md section 1): the `url` setting; else https, the Host header, and the
 * path of X-Original-URL as MollySocket does; through a trusted proxy, X-Forwarded-Host/Prefix win. The hosts are
 * checked by the caller (`isValidHost`: a malformed one is answered 400); the link stays https, and a proto, prefix
 * or X-Original-URL that is not usable is ignored and reported. Pure.
 */
export function serverUrl(req: { headers: Headers; url: string }, opts: { publicUrl: string | undefined; viaTrustedProxy: boolean }): ServerUrl {
  if (opts.publicUrl !== undefined) return { url: opts.publicUrl, unusable: [] };
  const unusable: string[] = [];
  const usable = (name: string, value: string | undefined, ok: (v: string) => boolean): string | undefined => {
    if (value === undefined || ok(value)) return value;
    unusable.push(name);
    return undefined;
  };
  const base = 'http://placeholder';
  const pathOf = (u: string): string => (URL.canParse(u, base) ? new URL(u, base).pathname : '/');
  let host = single(req.headers.host) ?? 'localhost';
  let prefix = '';
  if (opts.viaTrustedProxy) {
    usable('X-Forwarded-Proto', nearest(req.headers['x-forwarded-proto']), (v) => v.toLowerCase() === 'https'); // Molly takes only https
    host = nearest(req.headers['x-forwarded-host']) ?? host;
    prefix = usable('X-Forwarded-Prefix', nearest(req.headers['x-forwarded-prefix']), (v) => PATH_RE.test(v))?.replace(/\/+$/, '') ?? '';
  }
  // Only a path: `x:@evil.example/` would otherwise put another host in the link.
  const original =
    prefix === '' ? usable('X-Original-URL', single(req.headers['x-original-url']), (v) => v.startsWith('/') && URL.canParse(v, base)) : undefined;
  return { url: `https://${host}${prefix}${pathOf(original ?? req.url)}`, unusable };
}

interface RegistrationBody {
  uuid: string;
  device_id: number;
  password: string;
  endpoint: string;
  ping?: boolean;
}

/**
 * Text a database can store as it was sent: no NUL (PostgreSQL refuses it in text) and no lone UTF-16 surrogate
 * (it would be stored as U+FFFD, another password than Molly's). Ajv compiles patterns with the `u` flag.
 */
const STORABLE_TEXT = '^[^\\u0000\\uD800-\\uDFFF]*$';

/**
 * UnifiedPush leaves an endpoint's length to the distributor: take far more than any hands out. Longer ones are
 * answered `invalid_endpoint`, a status Molly shows, rather than a 400 it would call a bad answer.
 */
export const MAX_ENDPOINT_LENGTH = 8_192;

const registrationSchema = {
  type: 'object',
  required: ['uuid', 'device_id', 'password', 'endpoint'],
  properties: {
    uuid: { type: 'string', maxLength: 64, pattern: STORABLE_TEXT },
    device_id: { type: 'integer', minimum: 1, maximum: 2 ** 31 - 1 },
    password: { type: 'string', minLength: 1, maxLength: 256, pattern: STORABLE_TEXT },
    endpoint: { type: 'string', pattern: STORABLE_TEXT },
    ping: { type: 'boolean' },
  },
} as const;

/** Registrations are a few hundred bytes; an endpoint of MAX_ENDPOINT_LENGTH still fits. */
const BODY_LIMIT = 16 * 1024;

/**
 * Our logger without Fastify's own "Server listening at" lines (one per network interface on 0.0.0.0): the server
 * says once where it listens.
 */
function fastifyLogger(log: Logger): FastifyBaseLogger {
  const logger = log.child({});
  const info = logger.info as (this: Logger, ...args: unknown[]) => void;
  // Not bound: Fastify's per-request children inherit this method and must log with their own bindings and serializers.
  logger.info = function (this: Logger, ...args: unknown[]) {
    if (typeof args[0] === 'string' && args[0].startsWith('Server listening at ')) return;
    // Request lines at debug (-vv), as the README says: health checks would otherwise fill the info log.
    if (args[1] === 'incoming request' || args[1] === 'request completed') return void this.debug(...(args as [object, string]));
    info.apply(this, args);
  } as Logger['info'];
  return logger as FastifyBaseLogger;
}

/**
 * Whether a peer is a reverse proxy `trust_proxy` names, and so carries many clients: a listed address; with a
 * number of hops, a peer on the local network (a public peer is more likely a client than the proxy in front).
 */
export function isTrustedProxyPeer(setting: Config['trust_proxy'], trust: Trust | undefined, address: string): boolean {
  if (trust === undefined || !trust(address, 0)) return false;
  return typeof setting === 'object' || isLocalNetworkAddress(address);
}

function baseApp(log: Logger, trustProxy: Config['trust_proxy'], httpMetrics: HttpMetrics | undefined, limits = CLIENT_LIMITS): FastifyInstance {
  const trust = proxyTrust(trustProxy);
  let toldOfLocalPeer = false;
  const refused = (address: string): void => {
    if (isLocalNetworkAddress(address) && !toldOfLocalPeer) {
      toldOfLocalPeer = true;
      log.warn(
        { address, max: limits.maxConnectionsPerClient },
        'a peer on the local network holds the most connections one client may: if it is your reverse proxy, name it in trust_proxy',
      );
    } else {
      log.debug({ address }, 'connection refused: its client holds the most connections one client may');
    }
  };
  const app = Fastify({
    serverFactory: (handler) => new DualProtocolServer(handler as Handler, limits, (address) => isTrustedProxyPeer(trustProxy, trust, address), refused),
    loggerInstance: fastifyLogger(log),
    // Request lines only at debug (-vv): not even formatted otherwise.
    logController: new LogController({ disableRequestLogging: () => !log.isLevelEnabled('debug') }),
    bodyLimit: BODY_LIMIT,
    trustProxy: trust ?? false,
    ajv: { customOptions: { coerceTypes: false } },
  });
  // HTTP/2 names the host in :authority, HTTP/1.1 in Host: from here on, Host it is, whichever was spoken.
  app.addHook('onRequest', async (req) => {
    const authority = req.headers[':authority'];
    if (req.headers.host === undefined && typeof authority === 'string') req.headers.host = authority;
  });
  // HTTP/2 has no Connection header (Fastify sets one after a body it could not parse; Node would warn and drop it).
  app.addHook('onSend', async (req, reply) => {
    if (req.raw.httpVersionMajor === 2) reply.removeHeader('connection');
  });
  app.setErrorHandler((err: { statusCode?: number; message: string }, req, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) req.log.error({ err }, 'request failed');
    void reply.status(status).send({ error: status === 500 ? 'internal error' : err.message });
  });
  if (httpMetrics) {
    app.addHook('onResponse', async (req, reply) => {
      // As rocket_prometheus: labelled with the route's path, and a request that matched no route is not counted.
      const route = req.routeOptions.url;
      if (route !== undefined) httpMetrics.requestDone(route, req.method, reply.statusCode, reply.elapsedTime / 1000);
    });
  }
  return app;
}

/** `GET /health` and `GET /metrics`: counts only, never an account. */
function addOpsRoutes(app: FastifyInstance, ops: Ops): void {
  app.get('/health', async (_req, reply) => {
    const healthy = await ops.storeHealthy();
    const c = ops.counts();
    const cluster = ops.cluster?.() ?? {};
    return reply.status(healthy ? 200 : 503).send({
      status: healthy ? 'ok' : 'store_unavailable',
      version: ops.version,
      connections: { total: c.total, connected: c.connected, connecting: c.connecting, backoff: c.backoff, forbidden: c.forbidden },
      ...(cluster.instance !== undefined && { instance: cluster.instance, owned: cluster.owned, live_instances: cluster.liveInstances }),
    });
  });
  app.get('/metrics', async (_req, reply) => reply.type(ops.metricsContentType).send(await ops.metrics()));
}

/** A listener with only /health and /metrics (`metrics_port`), for operators who keep them private. */
export function buildOpsApp(ops: Ops, log: Logger, httpMetrics?: HttpMetrics, limits?: ClientLimits): FastifyInstance {
  const app = baseApp(log, false, httpMetrics, limits);
  addOpsRoutes(app, ops);
  return app;
}

export async function buildApp(deps: WebDeps): Promise<FastifyInstance> {
  const trust = proxyTrust(deps.trustProxy);
  const app = baseApp(deps.log, deps.trustProxy, deps.httpMetrics, deps.limits);
  await app.register(helmet, {
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'none'"],
        scriptSrc: [HOME_HASHES.script],
        styleSrc: [HOME_HASHES.style],
        imgSrc: ["'self'", 'data:'],
        baseUri: ["'none'"],
        formAction: ["'none'"],
        frameAncestors: ["'none'"],
      },
    },
    referrerPolicy: { policy: 'no-referrer' },
    // HSTS belongs to whoever terminates TLS for the whole host: the reverse proxy.
    strictTransportSecurity: false,
  });
  // Without trust_proxy, every phone behind a reverse proxy has the proxy's address: one bucket would refuse them all.
  const localPeersUnlimited = trust === undefined && deps.rateLimitPerMinute > 0;
  if (localPeersUnlimited) {
    deps.log.info('registration_rate_limit applies only to clients at public addresses: set trust_proxy to limit per phone behind a reverse proxy');
  }
  await app.register(rateLimit, { global: false, ...(localPeersUnlimited && { allowList: (req) => isLocalNetworkAddress(req.ip) }) });
  app.removeContentTypeParser('text/plain'); // registrations are JSON; anything else is 415

  const discovery = { mollysocket: { version: deps.version } };
  app.get('/discover', async () => discovery);
  app.get('/favicon.ico', async (_req, reply) => reply.code(204).send()); // browsers ask for it on every visit

  // A page (and its QR code, the costly part) is made once per link: the links a server shows are few. A client that
  // asks for more and more links (inventing Host values) is refused fresh ones beyond its share.
  const pages = new LRUCache<string, string>({ max: 64 });
  const freshPages = new FreshPagesPerClient((deps.limits ?? CLIENT_LIMITS).freshPagesPerMinute, 60_000);
  app.get<{ Querystring: Record<string, string> }>('/', async (req, reply) => {
    if (req.headers['user-agent']?.includes('Signal-Android')) return discovery;
    const viaTrustedProxy = trust?.(req.socket.remoteAddress ?? '', 0) ?? false;
    const hosts = [single(req.headers.host), ...(viaTrustedProxy ? [nearest(req.headers['x-forwarded-host'])] : [])];
    if (!hosts.every(isValidHost)) return reply.status(400).send({ error: 'the Host header is not a host name' });
    const airgapped = 'airgapped' in req.query;
    const server = airgapped ? undefined : serverUrl(req, { publicUrl: deps.publicUrl, viaTrustedProxy });
    const url = server?.url;
    const unusable = server?.unusable ?? [];
    const link = linkUrl(deps.vapidPublicKey, url === undefined ? { type: 'airgapped' } : { type: 'webserver', url });
    if (link.length > MAX_LINK_LENGTH) return reply.status(400).send({ error: 'the request path is too long for a link' });
    const pageKey = `${link} ${unusable.join(',')}`;
    let page = pages.get(pageKey);
    if (page === undefined) {
      const client = clientKey(req.ip);
      if (!freshPages.take(client)) {
        return reply
          .status(429)
          .header('Retry-After', String(freshPages.retryAfterSeconds(client)))
          .send({ error: 'too many different pages asked for: try again later' });
      }
      page = renderHome({
        mode: airgapped ? 'airgapped' : 'webserver',
        link,
        linkUrl: url,
        unusableHeaders: unusable,
        qrSvg: await qrSvg(link),
        version: deps.version,
      });
      pages.set(pageKey, page);
    }
    return reply.type('text/html; charset=utf-8').header('Cache-Control', 'no-store').send(page);
  });

  const limit = deps.rateLimitPerMinute > 0 ? { rateLimit: { max: deps.rateLimitPerMinute, timeWindow: '1 minute' } } : {};
  app.post<{ Body: RegistrationBody }>('/', { schema: { body: registrationSchema }, config: limit }, async (req) => {
    const b = req.body;
    if (b.endpoint.length > MAX_ENDPOINT_LENGTH) return { mollysocket: { version: deps.version, status: 'invalid_endpoint' } };
    const status = await deps.registrations.register(
      {
        uuid: b.uuid,
        deviceId: b.device_id,
        password: b.password,
        endpoint: b.endpoint,
        ping: b.ping ?? false,
      },
      req.ip,
    );
    return { mollysocket: { version: deps.version, status } };
  });

  if (deps.ops) addOpsRoutes(app, deps.ops);
  return app;
}
