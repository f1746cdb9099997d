import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { redactedConfig, signalUrl, type Config } from './config.js';
import { HEARTBEAT_MS } from './heartbeat.js';
import { linkUrl, qrTerminal } from './link.js';
import { systemClock, type Clock } from './clock.js';
import type { Logger } from './log.js';
import { packageRoot, version } from './paths.js';
import { Metrics } from './metrics.js';
import { isUuidAllowed, type Resolver } from './policy.js';
import { Notifier } from './push/notifier.js';
import { pushStack } from './push/setup.js';
import { clusterVapidKey, keptKeyPath, resolveVapidKey, type ResolvedKey } from './push/vapid.js';
import { ENDPOINT_GONE, Registrations } from './registrations.js';
import { askSignal } from './signal/link.js';
import { Supervisor, type SupervisorOptions } from './signal/supervisor.js';
import { Leases } from './cluster/leases.js';
import { PgLeaseStore } from './cluster/postgres-leases.js';
import { probeSignal } from './cluster/signal-probe.js';
import { isPostgresUrl } from './store/location.js';
import { openStore } from './store/open.js';
import { SqliteStore } from './store/sqlite.js';
import { StoreError, type Connection, type Store } from './store/store.js';
import {PostgresStore} from './store/postgres.js';
import {StoreWrites} from './store/writes.js';
import { buildApp, buildOpsApp, type Ops } from './web/app.js';

/** CA certificates for the Signal websocket: signal_ca_file, else Signal's own two roots. */
function signalCa(config: Config): Buffer[] {
  if (config.signal_ca_file !== undefined) {
    try {
      return [readFileSync(config.signal_ca_file)];
    } catch (err) {
      throw new Error(`cannot read signal_ca_file ${config.signal_ca_file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
  }
  return ['signal.pem', 'signal-ed25519.pem'].map((f) => readFileSync(join(packageRoot, 'certs', f)));
}

/** Protocol timings (docs/protocol.md section 2) and the parts of the supervisor's behaviour set by the config. */
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
    // A week: the old Molly's re-registrations still get a cheap `forbidden` (no question to Signal), and
    // `connection list` shows why it stopped, through a week away from the phone; then the row goes.
    leftBehindKeptMs: 7 * 24 * 3600_000,
    leftBehindSweepMs: 3600_000,
    recoveryIntervalMs: 1_000,
    handOverTimeoutMs: handOverTimeoutMs(config),
  };
}

/**
 * How long a handed-over socket waits for the new owner's to replace it, which also bounds the hand-over at shutdown:
 * two leases, at least 10 s (the new owners connect through their ramp).
 */
export const handOverTimeoutMs = (config: Pick<Config, 'lease_seconds'>): number => Math.max(10_000, 2 * config.lease_seconds * 1000);

/**
 * How long Signal gets to accept new credentials during a registration (Molly waits for the answer), before the
 * registration answers internal_error and Molly tries again later.
 */
const ASK_SIGNAL_TIMEOUT_MS = 5_000;

/** Time that pushes under way get to finish at shutdown. */
const PUSH_DRAIN_MS = 2_000;
/** How long one statement of the server may wait, blocking, for another process's lock; beyond it writes are retried. */
const SERVER_BUSY_TIMEOUT_MS = 5;

/**
 * A server ran here before (its kept VAPID key is beside the database) but the database is gone: starting would
 * silently create an empty one, and every registration would be lost for good.
 */
function refuseVanishedDatabase(config: Config): void {
  if (isPostgresUrl(config.db)) return;
  const key = keptKeyPath(config);
  if (existsSync(config.db) || !existsSync(key)) return;
  throw new StoreError(
    `the database ${config.db} (setting "db") is missing, but the VAPID key kept beside it (${key}) shows that a server ` +
      `ran here: restore the database from your backup, or create an empty one on purpose with \`touch ${config.db}\``,
  );
}


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

/** Sends the wake-ups the last run could not deliver before it stopped, to connections still wanting them. */
async function wakeOwed(owed: { uuid: string; deviceId: number }[], store: Store, notifier: Notifier, log: Logger): Promise<void> {
  const wanted = (await Promise.all(owed.map((k) => store.get(k)))).filter((c): c is Connection => c !== undefined && !c.forbidden);
  if (wanted.length === 0) return;
  log.info({ count: wanted.length }, 'sending the wake-ups owed since the last shutdown');
  for (const conn of wanted) notifier.urgent(conn);
}

/** Assembles store, pusher, supervisor and web server, and starts them. */
export async function startServer(config: Config, log: Logger, opts: ServerOptions = {}): Promise<RunningServer> {
  log.debug({ config: redactedConfig(config) }, 'configuration');
  refuseVanishedDatabase(config);
  const store = await openStore(config.db, { busyTimeoutMs: SERVER_BUSY_TIMEOUT_MS });
  if (store instanceof SqliteStore && store.migratedFrom) {
    log.warn({ db: config.db, backup: store.migratedFrom.backup }, "migrated MollySocket's database to this version's schema, after keeping a copy of it as it was");
  }
  const writes = new StoreWrites(log, opts.clock ? { clock: opts.clock } : {});
  // A clean shutdown removes the heartbeat: one left behind means the last run ended without one. (Several instances
  // on PostgreSQL: the devices of one that died are claimed as owed a wake-up instead.)
  const unclean = store instanceof SqliteStore && (await store.heartbeat()) !== undefined;
  let key: ResolvedKey;
  try {
    key = store instanceof PostgresStore ? await clusterVapidKey(config, store) : resolveVapidKey(config, { generate: true });
  } catch (err) {
    await store.close(); // an open PostgreSQL pool would keep the process from exiting
    throw err;
  }
  if (key.source === 'generated') {
    log.info({ file: key.path }, 'generated a VAPID key and kept it next to the database: back this file up with it');
  }
  const previousKey = await store.recordedVapidKey();
  if (previousKey !== undefined && previousKey !== key.publicKey) {
    log.warn({ was: previousKey, now: key.publicKey, source: key.source }, 'the VAPID key differs from the one this server used before: every Molly must scan the new QR code');
  }
  // The CLI compares its own key with this one, so that it never shows a QR code the server does not sign for.
  await writes.now(() => store.recordVapidKey(key.publicKey)); // retried while a CLI command holds the lock
  const { policy, client } = pushStack(config, key.privateKey, opts.resolver);
  const metrics = new Metrics(() => supervisor.counts());

  const options = (opts.tune ?? ((o) => o))(supervisorOptions(config));
  // The lease measures durations only: on a monotonic clock, so that a step of the wall clock cannot stretch it.
  const clock = opts.clock ?? { ...systemClock, now: () => performance.timeOrigin + performance.now() };
  const ownership =
    store instanceof PostgresStore
      ? new Leases(
          new PgLeaseStore(store, { answerMs: config.lease_seconds * 1000, ...(config.db_listen_url !== undefined && { listenUrl: config.db_listen_url }) }),
          {
            leaseSeconds: config.lease_seconds,
            name: config.instance_name || hostname(),
            version,
            pid: process.pid,
            reconcileMs: 30_000,
            handOverTimeoutMs: options.handOverTimeoutMs,
            probeSignal: () => probeSignal({ ...options.link, connectTimeoutMs: ASK_SIGNAL_TIMEOUT_MS }, clock),
          },
          clock,
          log,
          metrics,
        )
      : undefined;
  const supervisor: Supervisor = new Supervisor(options, {
    ...(ownership && { ownership }),
    store,
    log,
    onUrgent: (c) => notifier.urgent(c),
    onDeliveryCheck: (c) => notifier.deliveryCheck(c),
    onChanged: (c) => notifier.update(c),
    onRemoved: (k) => notifier.forget(k),
    writes,
    metrics,
    ...(opts.clock && { clock: opts.clock }),
  });
  metrics.watchLoad(() => {
    const pushes = client.load();
    return { pushesInFlight: pushes.inFlight, pushesQueued: pushes.queued, connectQueue: supervisor.connectQueue };
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
      onGone: (c) => supervisor.forbid(c, ENDPOINT_GONE, { endpoint: c.endpoint }),
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
      askSignal: (creds) =>
        askSignal(creds, { ...options.link, connectTimeoutMs: ASK_SIGNAL_TIMEOUT_MS, clock: opts.clock ?? systemClock, log }),
    },
    log,
    { writes },
  );

  const ops: Ops = {
    version,
    counts: () => supervisor.counts(),
    storeHealthy: async () => (await store.healthy()) && writes.failing() === undefined,
    cluster: () => supervisor.ownership.describe(),
    metrics: () => metrics.registry.metrics(),
    metricsContentType: metrics.registry.contentType,
  };
  const listeners: FastifyInstance[] = [];
  let url: string | undefined;
  let opsUrl: string | undefined;
  if (config.metrics_port !== undefined) {
    const opsApp = buildOpsApp(ops, log, metrics);
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
      httpMetrics: metrics,
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
  if (unclean) {
    log.warn('the last run did not end cleanly: each connection gets one wake-up once connected, for messages it may have acknowledged without pushing');
  }
  await supervisor.start({ wakeAfterConnect: unclean });
  // Taken only now that the server runs: a start that failed earlier leaves them for the next one.
  await wakeOwed(await writes.now(() => store.takeOwedWakeups()), store, notifier, log);
  const startedAt = Date.now();
  let published = -1;
  // Through the write queue: a locked or failing database never holds up the sockets; only the latest state matters.
  const publish = (): void => {
    const revision = supervisor.revision;
    if (revision !== published) {
      const states = supervisor.statuses();
      writes.later('states', () => store.publishStates(states), () => (published = revision));
    }
    const beat = { pid: process.pid, version, startedAt, seenAt: Date.now() };
    writes.later('heartbeat', () => store.beat(beat));
  };
  publish();
  const heartbeat = setInterval(publish, HEARTBEAT_MS);

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
      const stillOwed = await notifier.drain(PUSH_DRAIN_MS);
      client.close();
      clearInterval(heartbeat);
      const unwritten = await writes.close();
      if (unwritten > 0) log.error({ count: unwritten }, 'store writes still failing at shutdown are lost');
      try {
        await store.keepOwedWakeups(stillOwed);
        if (stillOwed.length > 0) {
          log.warn({ count: stillOwed.length }, 'wake-ups not delivered before shutdown: kept in the store, sent at the next start');
        }
        await store.clearLive(); // a clean shutdown
      } catch (err) {
        log.error({ err, owed: stillOwed.length }, 'cannot record the shutdown in the store: the next start treats it as unclean');
      }
      await store.close();
    },
  };
}
