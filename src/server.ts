import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { redactedConfig, signalUrl, type Config } from './config.js';
import { HEARTBEAT_MS } from './heartbeat.js';
import { linkUrl, qrTerminal } from './link.js';
import type { Clock } from './clock.js';
import type { Logger } from './log.js';
import { packageRoot, version } from './paths.js';
import { Metrics } from './metrics.js';
import { isUuidAllowed, type Resolver } from './policy.js';
import { Notifier } from './push/notifier.js';
import { pushStack } from './push/setup.js';
import { clusterVapidKey, resolveVapidKey } from './push/vapid.js';
import { ENDPOINT_GONE, Registrations } from './registrations.js';
import { Supervisor, type SupervisorOptions } from './signal/supervisor.js';
import { Leases } from './cluster/leases.js';
import { hostname } from 'node:os';
import { openStore, type Store } from './store.js';
import { PostgresStore } from './store-pg.js';
import { buildApp, buildOpsApp, type Ops } from './web/app.js';

/** CA certificates for the Signal websocket: signal_ca_file, else Signal's own two roots. */
function signalCa(config: Config): Buffer[] {
  if (config.signal_ca_file !== undefined) {
    try {
      return [readFileSync(config.signal_ca_file)];
    } catch (err) {
      throw new Error(`cannot read signal_ca_file ${config.signal_ca_file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  return ['signal.pem', 'signal-ed25519.pem'].map((f) => readFileSync(join(packageRoot, 'certs', f)));
}

/** Protocol timings (PROTOCOL.md section 2) and the parts of the supervisor's behaviour set by the config. */
export function supervisorOptions(config: Config): SupervisorOptions {
  return {
    link: {
      url: signalUrl(config),
      ca: signalCa(config),
      userAgent: config.user_agent,
      connectTimeoutMs: 30_000,
      keepaliveIntervalMs: 30_000,
      keepaliveTimeoutMs: 20_000,
    },
    backoff: { baseMs: 1_000, capMs: config.backoff_max_seconds * 1000 },
    healthyAfterMs: 60_000,
    ramp: { ratePerSecond: config.connect_rate, concurrency: config.connect_concurrency },
    storePollMs: 2_000,
    deliveryCheckIntervalMs: 3600_000,
    keepaliveTickMs: 1_000,
    handOverTimeoutMs: handOverTimeoutMs(config),
  };
}

/**
 * How long a handed-over socket waits for the new owner's to replace it, which also bounds the hand-over at shutdown:
 * two leases, at least 10 s (the new owners connect through their ramp).
 */
export const handOverTimeoutMs = (config: Pick<Config, 'lease_seconds'>): number => Math.max(10_000, 2 * config.lease_seconds * 1000);

/** Time that pushes under way get to finish at shutdown. */
const PUSH_DRAIN_MS = 2_000;


export interface ServerOptions {
  clock?: Clock;
  /** DNS for push endpoints (tests map names to loopback). */
  resolver?: Resolver;
  /** Adjusts the supervisor's options (tests shorten timings). */
  tune?: (opts: SupervisorOptions) => SupervisorOptions;
}

export interface RunningServer {
  /** The web server's address, when it listens. */
  url: string | undefined;
  /** The health and metrics listener's address, when metrics_port is set. */
  opsUrl: string | undefined;
  store: Store;
  supervisor: Supervisor;
  vapidPublicKey: string;
  metrics: Metrics;
  close(): Promise<void>;
}

/** Assembles store, pusher, supervisor and web server, and starts them. */
export async function startServer(config: Config, log: Logger, opts: ServerOptions = {}): Promise<RunningServer> {
  log.debug({ config: redactedConfig(config) }, 'configuration');
  const store = await openStore(config.db);
  const key = store instanceof PostgresStore ? await clusterVapidKey(config, store) : resolveVapidKey(config, { generate: true });
  if (key.source === 'generated') {
    log.info({ file: key.path }, 'generated a VAPID key and kept it next to the database: back this file up with it');
  }
  const { policy, client } = pushStack(config, key.privateKey, opts.resolver);
  const metrics = new Metrics(() => supervisor.counts());

  const options = (opts.tune ?? ((o) => o))(supervisorOptions(config));
  const ownership =
    store instanceof PostgresStore
      ? new Leases(store, { leaseSeconds: config.lease_seconds, name: config.instance_name || hostname(), version, reconcileMs: 30_000 }, log, metrics)
      : undefined;
  const supervisor: Supervisor = new Supervisor(options, {
    ...(ownership && { ownership }),
    store,
    log,
    onUrgent: (c) => notifier.urgent(c),
    onDeliveryCheck: (c) => notifier.deliveryCheck(c),
    metrics,
    ...(opts.clock && { clock: opts.clock }),
  });
  const notifier = new Notifier(
    {
      minIntervalMs: config.push_min_interval_ms,
      retry: { baseMs: 1_000, capMs: 5 * 60_000 },
      giveUpAfterMs: config.push_give_up_hours * 3600_000,
    },
    {
      client,
      log,
      metrics,
      onGone: (c) => supervisor.forbid(c, ENDPOINT_GONE),
      isActive: (c) => supervisor.wantsPushes(c),
      ...(opts.clock && { clock: opts.clock }),
    },
  );
  const registrations = new Registrations(
    store,
    {
      isUuidAllowed: (uuid) => isUuidAllowed(uuid, config.allowed_uuids),
      checkEndpoint: (endpoint) => policy.check(endpoint),
      connectionChanged: (conn) => supervisor.sync(conn),
      sendTestPush: (conn) => notifier.test(conn),
    },
    log,
  );

  const ops: Ops = {
    version,
    counts: () => supervisor.counts(),
    storeHealthy: () => store.healthy(),
    cluster: () => supervisor.ownership.describe(),
    metrics: () => metrics.registry.metrics(),
    metricsContentType: metrics.registry.contentType,
  };
  const listeners: FastifyInstance[] = [];
  let url: string | undefined;
  let opsUrl: string | undefined;
  if (config.metrics_port !== undefined) {
    const opsApp = buildOpsApp(ops, log);
    listeners.push(opsApp);
    opsUrl = await opsApp.listen({ host: config.metrics_host, port: config.metrics_port });
    log.info({ url: opsUrl }, 'health and metrics listening');
  }
  if (config.webserver) {
    const app = await buildApp({
      registrations,
      vapidPublicKey: key.publicKey,
      version,
      log,
      publicUrl: config.url,
      trustProxy: config.trust_proxy,
      rateLimitPerMinute: config.registration_rate_limit,
      ops: config.metrics_port === undefined ? ops : undefined,
    });
    listeners.push(app);
    url = await app.listen({ host: config.host, port: config.port });
    log.info({ url, version }, 'web server listening');
  } else {
    const link = linkUrl(key.publicKey, { type: 'airgapped' });
    log.warn(
      { link },
      'the web server is off (webserver = false): air-gapped mode. Molly cannot update its registration by itself; ' +
        'register with `mollysocket connection add`. Scan the code below with Molly.',
    );
    // Raw on stderr: inside a JSON log line the code's line breaks would be escaped and it could not be scanned.
    process.stderr.write(`\n${await qrTerminal(link)}\n${link}\n\n`);
  }
  await supervisor.start();
  const startedAt = Date.now();
  let published = -1;
  const publish = async (): Promise<void> => {
    try {
      if (supervisor.revision !== published) {
        const revision = supervisor.revision;
        await store.publishStates(supervisor.statuses());
        published = revision;
      }
      await store.beat({ pid: process.pid, version, startedAt, seenAt: Date.now() });
    } catch (err) {
      log.error({ err: (err as Error).message }, 'cannot write the heartbeat to the store');
    }
  };
  await publish();
  const heartbeat = setInterval(() => void publish(), HEARTBEAT_MS);

  return {
    url,
    opsUrl,
    store,
    supervisor,
    vapidPublicKey: key.publicKey,
    metrics,
    async close() {
      await Promise.all(listeners.map((l) => l.close()));
      await supervisor.stop();
      await notifier.drain(PUSH_DRAIN_MS);
      client.close();
      clearInterval(heartbeat);
      try {
        await store.clearLive();
      } catch (err) {
        log.debug({ err: (err as Error).message }, 'cannot clear the heartbeat'); // the store is already gone
      }
      await store.close();
    },
  };
}
