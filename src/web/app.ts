import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import { linkUrl, qrSvg } from '../link.js';
import type { Logger } from '../log.js';
import type { Registrations } from '../registrations.js';
import { renderHome } from './home.js';

export interface WebDeps {
  registrations: Registrations;
  vapidPublicKey: string;
  version: string;
  log: Logger;
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

/** The URL Molly must store: https, the Host header, and the path a reverse proxy reports in X-Original-URL. */
function publicUrl(req: FastifyRequest): string {
  const original = req.headers['x-original-url'];
  const path = new URL(typeof original === 'string' ? original : req.url, 'http://placeholder').pathname;
  return `https://${req.headers.host ?? 'localhost'}${path}`;
}

export async function buildApp(deps: WebDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.log as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    ajv: { customOptions: { coerceTypes: false } },
  });
  const discovery = { mollysocket: { version: deps.version } };

  app.setErrorHandler((err: { statusCode?: number; message: string }, req, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) req.log.error({ err: err.message }, 'request failed');
    void reply.status(status).send({ error: status === 500 ? 'internal error' : err.message });
  });

  app.get('/discover', async () => discovery);

  app.get('/', async (req, reply) => {
    if (req.headers['user-agent']?.includes('Signal-Android')) return discovery;
    const link = linkUrl(deps.vapidPublicKey, { type: 'webserver', url: publicUrl(req) });
    return reply.type('text/html; charset=utf-8').send(renderHome({ link, qrSvg: await qrSvg(link), version: deps.version }));
  });

  app.post<{ Body: RegistrationBody }>('/', { schema: { body: registrationSchema } }, async (req) => {
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

  return app;
}
