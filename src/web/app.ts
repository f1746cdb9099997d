import helmet from '@fastify/helmet';
import rateLimit from '@fastify/rate-limit';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { LRUCache } from 'lru-cache';
import { linkUrl, qrSvg } from '../link.js';
import type { Logger } from '../log.js';
import type { HttpMetrics } from '../metrics.js';
import type { Registrations } from '../registrations.js';
import { HOME_HASHES, renderHome } from './home.js';

/** What /health and /metrics report. */
export interface Ops {
  version: string;
  counts(): { total: number; connected: number; connecting: number; backoff: number; forbidden: number };
  /** False when the database cannot be read. */
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
  /** `trust_proxy`: believe X-Forwarded-* headers (and the client address in X-Forwarded-For). */
  trustProxy: boolean;
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
}

export const CLIENT_LIMITS: ClientLimits = { requestTimeoutMs: 10_000, idleTimeoutMs: 30_000, maxConnections: 1024, checkIntervalMs: 1_000 };

/** A host name or IP literal with an optional port, as a Host header must be; anything else is refused (400). */
const HOST_HEADER = /^(?:[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?$/i;
const MAX_HOST_LENGTH = 261; // 253 for the name, a port
/** Far more than a real link needs, and a QR code that stays cheap to draw and easy to scan. */
const MAX_LINK_LENGTH = 1_000;
export const isValidHost = (host: string | undefined): boolean =>
  host === undefined || (host.length <= MAX_HOST_LENGTH && HOST_HEADER.test(host));

type Headers = Record<string, string | string[] | undefined>;

const first = (value: string | string[] | undefined): string | undefined => {
  const v = Array.isArray(value) ? value[0] : value;
  return v?.split(',')[0]?.trim() || undefined;
};

/**
 * The server URL Molly must store (PROTOCOL.md section 1): the `url` setting; else, with trust_proxy,
 * X-Forwarded-Proto/Host/Prefix; else https, the Host header, and the path of X-Original-URL as MollySocket does.
 * Pure.
 */
export function serverUrl(
  req: { headers: Headers; url: string },
  opts: { publicUrl: string | undefined; trustProxy: boolean },
): string {
  if (opts.publicUrl !== undefined) return opts.publicUrl;
  const pathOf = (u: string): string => new URL(u, 'http://placeholder').pathname;
  const host = first(req.headers.host) ?? 'localhost';
  if (opts.trustProxy) {
    const proto = first(req.headers['x-forwarded-proto']) ?? 'https';
    const prefix = (first(req.headers['x-forwarded-prefix']) ?? '').replace(/\/+$/, '');
    return `${proto}://${first(req.headers['x-forwarded-host']) ?? host}${prefix}${pathOf(req.url)}`;
  }
  const original = first(req.headers['x-original-url']);
  return `https://${host}${pathOf(original ?? req.url)}`;
}

interface RegistrationBody {
  uuid: string;
  device_id: number;
  password: string;
  endpoint: string;
  ping?: boolean;
}

const registrationSchema = {
  type: 'object',
  required: ['uuid', 'device_id', 'password', 'endpoint'],
  properties: {
    uuid: { type: 'string', maxLength: 64 },
    device_id: { type: 'integer', minimum: 1, maximum: 2 ** 31 - 1 },
    password: { type: 'string', minLength: 1, maxLength: 256 },
    endpoint: { type: 'string', maxLength: 1000 },
    ping: { type: 'boolean' },
  },
} as const;

/** Registrations are a few hundred bytes. */
const BODY_LIMIT = 8 * 1024;

function baseApp(log: Logger, trustProxy: boolean, httpMetrics: HttpMetrics | undefined, limits = CLIENT_LIMITS): FastifyInstance {
  const app = Fastify({
    requestTimeout: limits.requestTimeoutMs,
    connectionTimeout: limits.idleTimeoutMs,
    http: { headersTimeout: limits.requestTimeoutMs, requestTimeout: limits.requestTimeoutMs, connectionsCheckingInterval: limits.checkIntervalMs },
    loggerInstance: log as FastifyBaseLogger,
    // Request lines only with -v: health checks would otherwise fill the log.
    logController: new LogController({ disableRequestLogging: () => !log.isLevelEnabled('debug') }),
    bodyLimit: BODY_LIMIT,
    trustProxy,
    ajv: { customOptions: { coerceTypes: false } },
  });
  app.server.maxConnections = limits.maxConnections;
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
  await app.register(rateLimit, { global: false });
  app.removeContentTypeParser('text/plain'); // registrations are JSON; anything else is 415

  const discovery = { mollysocket: { version: deps.version } };
  app.get('/discover', async () => discovery);
  app.get('/favicon.ico', async (_req, reply) => reply.code(204).send()); // browsers ask for it on every visit

  // A page (and its QR code, the costly part) is made once per link: the links a server shows are few.
  const pages = new LRUCache<string, string>({ max: 64 });
  app.get<{ Querystring: Record<string, string> }>('/', async (req, reply) => {
    if (req.headers['user-agent']?.includes('Signal-Android')) return discovery;
    const hosts = [req.headers.host, ...(deps.trustProxy ? [req.headers['x-forwarded-host']] : [])].map(first);
    if (!hosts.every(isValidHost)) return reply.status(400).send({ error: 'the Host header is not a host name' });
    const airgapped = 'airgapped' in req.query;
    let url: string | undefined;
    try {
      url = airgapped ? undefined : serverUrl(req, deps);
    } catch {
      return reply.status(400).send({ error: 'a proxy header does not make a URL' });
    }
    const link = linkUrl(deps.vapidPublicKey, url === undefined ? { type: 'airgapped' } : { type: 'webserver', url });
    if (link.length > MAX_LINK_LENGTH) return reply.status(400).send({ error: 'the request path is too long for a link' });
    let page = pages.get(link);
    if (page === undefined) {
      page = renderHome({ mode: airgapped ? 'airgapped' : 'webserver', link, linkUrl: url, qrSvg: await qrSvg(link), version: deps.version });
      pages.set(link, page);
    }
    return reply.type('text/html; charset=utf-8').header('Cache-Control', 'no-store').send(page);
  });

  const limit = deps.rateLimitPerMinute > 0 ? { rateLimit: { max: deps.rateLimitPerMinute, timeWindow: '1 minute' } } : {};
  app.post<{ Body: RegistrationBody }>('/', { schema: { body: registrationSchema }, config: limit }, async (req) => {
    const b = req.body;
    const status = await deps.registrations.register({
      uuid: b.uuid,
      deviceId: b.device_id,
      password: b.password,
      endpoint: b.endpoint,
      ping: b.ping ?? false,
    });
    return { mollysocket: { version: deps.version, status } };
  });

  if (deps.ops) addOpsRoutes(app, deps.ops);
  return app;
}
