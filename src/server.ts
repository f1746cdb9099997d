import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { redactedConfig, signalUrl, type Config } from './config.js';
import { RelayEvents } from './events.js';
import { HEARTBEAT_MS } from './heartbeat.js';
import { linkUrl, qrTerminal } from './link.js';
import { systemClock, type Clock } from './clock.js';
import { unmuted, type Logger } from './log.js';
import { packageRoot, version } from './paths.js';
import { Metrics } from './metrics.js';
import { isUuidAllowed } from './policy.js';
import type { Resolver } from './resolver.js';
import type { PushClient } from './push/client.js';
import { Notifier } from './push/notifier.js';
import { pushStack } from './push/setup.js';
import type { ResolvedKey } from './push/vapid.js';
import { ENDPOINT_GONE, Registrations } from './registrations.js';
import { askSignal } from './signal/link.js';
import { probeSignal } from './cluster/signal-probe.js';
import { Supervisor, type SupervisorOptions } from './signal/supervisor.js';
import { openStore, type Backend } from './store/open.js';
import type { Connection, Store } from './store/store.js';
import { StoreWrites } from './store/writes.js';
import { Summary } from './summary.js';
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

/** The supervisor's options, and how often a file is checked for the CLI's changes (its ownership follows them). */
type Timings = SupervisorOptions & { storePollMs: number };

/** Protocol timings (docs/protocol.md section 2) and the parts of the supervisor's behaviour set by the config. */
function supervisorOptions(config: Config): Timings {
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
    forbiddenRetentionMs: config.forbidden_retention_days * 86_400_000,
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

export interface ServerOptions {
  clock?: Clock;
  /** DNS for push endpoints (tests map names to loopback). */
  resolver?: Resolver;
  /** Adjusts the supervisor's options (tests shorten timings). */
  tune?: (opts: Timings) => Timings;
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

/** The parts of a server, built and wired, nothing running yet. */
interface Parts {
  config: Config;
  log: Logger;
  backend: Backend;
  store: Store;
  writes: StoreWrites;
  key: ResolvedKey;
  client: PushClient;
  metrics: Metrics;
  supervisor: Supervisor;
  notifier: Notifier;
  registrations: Registrations;
  ops: Ops;
  summary: Summary;
}

/** The parts running: what shutting down stops. */
interface Running {
  listeners: FastifyInstance[];
  url: string | undefined;
  opsUrl: string | undefined;
  heartbeat: NodeJS.Timeout;
}

/** Assembles store, pusher, supervisor and web server, and starts them. */
export async function startServer(config: Config, log: Logger, opts: ServerOptions = {}): Promise<RunningServer> {
  log.debug({ config: redactedConfig(config) }, 'configuration');
  const parts = await build(config, log, opts);
  const running = await run(parts);
  return {
    url: running.url,
    opsUrl: running.opsUrl,
    store: parts.store,
    supervisor: parts.supervisor,
    vapidPublicKey: parts.key.publicKey,
    metrics: parts.metrics,
    close: () => shutDown(parts, running),
  };
}

/** Opens the store, settles the VAPID key, and builds every part; the supervisor and notifier meet through `events`. */
async function build(config: Config, log: Logger, opts: ServerOptions): Promise<Parts> {
  const clock = opts.clock ?? systemClock;
  // The lease measures durations only: on a monotonic clock, so that a step of the wall clock cannot stretch it.
  const leaseClock = opts.clock ?? { ...systemClock, now: () => performance.timeOrigin + performance.now() };
  const backend = await openStore(config.db, { busyTimeoutMs: SERVER_BUSY_TIMEOUT_MS, server: true });
  const { store } = backend;
  if (backend.report.migratedFrom) {
    log.warn(
      { db: config.db, backup: backend.report.migratedFrom.backup },
      "migrated MollySocket's database to this version's schema, after keeping a copy of it as it was",
    );
  }
  const writes = new StoreWrites(log, { errors: store, clock });
  let key: ResolvedKey;
  try {
    key = await serverKey(config, backend, writes, log);
  } catch (err) {
    await store.close(); // an open PostgreSQL pool would keep the process from exiting
    throw err;
  }
  const { policy, client } = pushStack(config, key.privateKey, opts.resolver);
  const metrics = new Metrics();
  const events = new RelayEvents();
  const timings = (opts.tune ?? ((o) => o))(supervisorOptions(config));
  const ownership = backend.ownership({
    pollMs: timings.storePollMs,
    leaseSeconds: config.lease_seconds,
    name: config.instance_name || hostname(),
    version,
    pid: process.pid,
    reconcileMs: 30_000,
    handOverTimeoutMs: timings.handOverTimeoutMs,
    listenUrl: config.db_listen_url,
    probeSignal: () => probeSignal({ ...timings.link, connectTimeoutMs: ASK_SIGNAL_TIMEOUT_MS }, leaseClock),
    clock: leaseClock,
    log,
    metrics,
  });
  const supervisor = new Supervisor(timings, { ownership, store, log, events, writes, metrics, clock });
  const notifier = new Notifier(
    {
      minIntervalMs: config.push_min_interval_ms,
      retry: { baseMs: 1_000, capMs: 5 * 60_000 },
      giveUpAfterMs: config.push_give_up_hours * 3600_000,
    },
    { client, log, metrics, events, isActive: (c) => supervisor.wantsPushes(c), clock },
  );
  // The loop: what happens on the sockets reaches the pushes, and a push endpoint that is gone stops the socket.
  events.on('urgent', (c) => notifier.urgent(c));
  events.on('deliveryCheck', (c) => notifier.deliveryCheck(c));
  events.on('changed', (c) => notifier.update(c));
  events.on('removed', (k) => notifier.forget(k));
  events.on('handedOver', (k) => notifier.release(k));
  events.on('gone', (t) => supervisor.forbid(t, ENDPOINT_GONE, { endpoint: t.endpoint }));
  metrics.watchStates(() => supervisor.counts());
  metrics.watchLoad(() => {
    const pushes = client.load();
    return { pushesInFlight: pushes.inFlight, pushesQueued: pushes.queued, connectQueue: supervisor.connectQueue };
  });
  const registrations = new Registrations(
    store,
    {
      isUuidAllowed: (uuid) => isUuidAllowed(uuid, config.allowed_uuids),
      checkEndpoint: (endpoint) => policy.check(endpoint),
      connectionChanged: (conn) => supervisor.sync(conn),
      sendTestPush: (conn) => notifier.test(conn),
      askSignal: (creds) => askSignal(creds, { ...timings.link, connectTimeoutMs: ASK_SIGNAL_TIMEOUT_MS, clock, log }),
    },
    log,
    { writes, maxConnections: config.max_connections },
  );
  const ops: Ops = {
    version,
    counts: () => supervisor.counts(),
    storeHealthy: async () => (await store.healthy()) && writes.failing() === undefined,
    cluster: () => supervisor.ownership.describe(),
    metrics: () => metrics.registry.metrics(),
    metricsContentType: metrics.registry.contentType,
  };
  const summary = new Summary({ log, clock, counts: () => supervisor.counts(), metrics });
  return { config, log, backend, store, writes, key, client, metrics, supervisor, notifier, registrations, ops, summary };
}

/**
 * The key the server signs with (configured, kept, or generated and kept), recorded in the store: the CLI compares
 * its own key with it, so that it never shows a QR code the server does not sign for.
 */
async function serverKey(config: Config, backend: Backend, writes: StoreWrites, log: Logger): Promise<ResolvedKey> {
  const key = (await backend.vapidKey.resolve(config, { generate: true }))!;
  if (key.source === 'generated') {
    unmuted(log).info({ file: resolve(key.path!) }, 'generated a VAPID key and kept it next to the database: back this file up with it');
  }
  const previousKey = await backend.store.recordedVapidKey();
  if (previousKey !== undefined && previousKey !== key.publicKey) {
    log.warn(
      { was: previousKey, now: key.publicKey, source: key.source },
      'the VAPID key differs from the one this server used before: every Molly must scan the new QR code',
    );
  }
  await writes.now(() => backend.store.recordVapidKey(key.publicKey)); // retried while a CLI command holds the lock
  return key;
}

/** Listens, starts every connection, sends what the last run owed, and publishes the server's state from then on. */
async function run(parts: Parts): Promise<Running> {
  const { config, log, backend, store, writes, supervisor, notifier } = parts;
  const listeners: FastifyInstance[] = [];
  let opsUrl: string | undefined;
  if (config.metrics_port !== undefined) {
    const opsApp = buildOpsApp(parts.ops, log, parts.metrics);
    listeners.push(opsApp);
    opsUrl = await opsApp.listen({ host: config.metrics_host, port: config.metrics_port });
    log.info({ url: opsUrl }, 'health and metrics listening');
  }
  let url: string | undefined;
  if (config.webserver) {
    const app = await buildApp({
      registrations: parts.registrations,
      vapidPublicKey: parts.key.publicKey,
      version,
      log,
      publicUrl: config.url,
      trustProxy: config.trust_proxy,
      rateLimitPerMinute: config.registration_rate_limit,
      ops: config.metrics_port === undefined ? parts.ops : undefined,
      httpMetrics: parts.metrics,
    });
    listeners.push(app);
    url = await app.listen({ host: config.host, port: config.port });
    log.info({ url, version }, 'web server listening');
  } else {
    await showAirGappedLink(parts.key.publicKey, log);
  }
  const unclean = backend.report.uncleanStop;
  if (unclean) {
    log.warn('the last run did not end cleanly: each connection gets one wake-up once connected, for messages it may have acknowledged without pushing');
  }
  await supervisor.start({ wakeAfterConnect: unclean });
  parts.summary.start();
  // Taken only now that the server runs: a start that failed earlier leaves them for the next one.
  await wakeOwed(await writes.now(() => store.takeOwedWakeups()), store, notifier, log);
  const startedAt = Date.now();
  let published = -1;
  // Through the write queue: a locked or failing database never holds up the sockets; only the latest state matters.
  const publish = (): void => {
    const revision = supervisor.revision;
    if (revision !== published) {
      const states = supervisor.statuses();
      writes.later(
        'states',
        () => store.publishStates(states),
        () => (published = revision),
      );
    }
    const { heartbeats } = backend;
    const beat = { pid: process.pid, version, startedAt, seenAt: Date.now() };
    if (heartbeats) writes.later('heartbeat', () => heartbeats.beat(beat));
  };
  publish();
  return { listeners, url, opsUrl, heartbeat: setInterval(publish, HEARTBEAT_MS) };
}

/** Air-gapped mode: the link Molly scans, on stderr. */
async function showAirGappedLink(publicKey: string, log: Logger): Promise<void> {
  const link = linkUrl(publicKey, { type: 'airgapped' });
  log.warn(
    { link },
    'the web server is off (webserver = false): air-gapped mode. Molly cannot update its registration by itself; ' +
      'register with `mollysocket connection add`. Scan the code below with Molly.',
  );
  // Raw on stderr: inside a JSON log line the code's line breaks would be escaped and it could not be scanned.
  process.stderr.write(`\n${await qrTerminal(link)}\n${link}\n\n`);
}

/** Sends the wake-ups the last run could not deliver before it stopped, to connections still wanting them. */
async function wakeOwed(owed: { uuid: string; deviceId: number }[], store: Store, notifier: Notifier, log: Logger): Promise<void> {
  const wanted = (await Promise.all(owed.map((k) => store.get(k)))).filter((c): c is Connection => c !== undefined && !c.forbidden);
  if (wanted.length === 0) return;
  log.info({ count: wanted.length }, 'sending the wake-ups owed since the last shutdown');
  for (const conn of wanted) notifier.urgent(conn);
}

/**
 * Stops taking registrations, closes every socket (handing devices over first, on PostgreSQL), gives pushes under way
 * a moment, and records in the store what the next start must know: the wake-ups still owed, and a clean stop.
 */
async function shutDown(parts: Parts, running: Running): Promise<void> {
  const { log, store, writes } = parts;
  await Promise.all(running.listeners.map((l) => l.close()));
  parts.summary.stop();
  await parts.supervisor.stop();
  const stillOwed = await parts.notifier.drain(PUSH_DRAIN_MS);
  parts.client.close();
  clearInterval(running.heartbeat);
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
}
