import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';
import { version } from './paths.js';
import type { PushKind, PushOutcome } from './push/client.js';

/** Connection counts by state, read when metrics are collected. */
export type StateCounts = () => { connecting: number; connected: number; backoff: number; forbidden: number };

/**
 * prom-client's process and runtime metrics (process_*, nodejs_eventloop_lag_*, heap, gc), made once per process:
 * each set keeps an event-loop delay monitor running, and they describe the process, not one server in it. The
 * monitor samples every 100 ms rather than prom-client's 10 ms: an idle server spent about 0.8 % of a core more on
 * it at 10 ms, 0.1 % at 100 ms, and a lag worth an alert lasts far longer than a sample.
 */
let processMetrics: Metric[] | undefined;
function defaultMetrics(): Metric[] {
  if (processMetrics === undefined) {
    const registry = new Registry();
    collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
    processMetrics = registry.getMetricsAsArray().map((m) => registry.getSingleMetric(m.name) as Metric);
  }
  return processMetrics;
}

/** Records one answered HTTP request: what rocket_prometheus records for MollySocket's web server. */
export interface HttpMetrics {
  /** `endpoint`: the route's path (`/`, `/discover`, `/metrics`), never the request's own URL. */
  requestDone(endpoint: string, method: string, status: number, seconds: number): void;
}

/**
 * Prometheus metrics. The first five keep MollySocket's names and meaning, and the two `rocket_http_*` those of
 * the Rocket fairing (rocket_prometheus 0.10) on MollySocket's page, which dashboards already use; none has a
 * per-account label.
 */
export class Metrics implements HttpMetrics {
  readonly registry = new Registry();
  readonly reconnections: Counter;
  readonly messages: Counter;
  readonly pushes: Counter;
  readonly pushResults: Counter<'kind' | 'outcome'>;
  readonly pushRetries: Counter;
  readonly pushDuration: Histogram;
  readonly leases: Counter<'event'>;
  readonly httpRequests: Counter<'endpoint' | 'method' | 'status'>;
  readonly httpDuration: Histogram<'endpoint' | 'method' | 'status'>;

  private states: StateCounts;

  constructor(states: StateCounts = () => ({ connecting: 0, connected: 0, backoff: 0, forbidden: 0 })) {
    this.states = states;
    const registers = [this.registry];
    for (const metric of defaultMetrics()) this.registry.registerMetric(metric);
    new Gauge({ name: 'mollysocket_build_info', help: 'The version this server runs, as a label; always 1', labelNames: ['version'], registers }).set(
      { version },
      1,
    );
    const read = (): ReturnType<StateCounts> => this.states();
    new Gauge({
      name: 'mollysocket_connections',
      help: 'Connections to Signal server',
      registers,
      collect() {
        // As MollySocket counts its connection loops: every connection not forbidden, reconnecting included.
        const s = read();
        this.set(s.connecting + s.connected + s.backoff);
      },
    });
    new Gauge({
      name: 'mollysocket_forbiddens',
      help: 'Forbidden connections to Signal server',
      registers,
      collect() {
        this.set(read().forbidden);
      },
    });
    // mollysocket_connections counts every connection this instance runs (stored, not forbidden), reconnecting ones
    // included; alerts and dashboards need the sockets actually up as well.
    new Gauge({
      name: 'mollysocket_connection_states',
      help: 'Connections by state: connecting, connected, backoff (waiting to reconnect), forbidden',
      labelNames: ['state'],
      registers,
      collect() {
        const s = read();
        for (const state of ['connecting', 'connected', 'backoff', 'forbidden'] as const) this.set({ state }, s[state]);
      },
    });
    this.reconnections = new Counter({ name: 'mollysocket_reconnections', help: 'Reconnections since the start', registers });
    this.messages = new Counter({ name: 'mollysocket_messages', help: 'Messages received from Signal', registers });
    this.pushes = new Counter({ name: 'mollysocket_pushs', help: 'Push messages sent to UnifiedPush endpoint', registers });
    this.pushResults = new Counter({
      name: 'mollysocket_push_results_total',
      help: 'Push requests by kind (urgent, test, delivery_check) and outcome (delivered, gone, rate_limited, rejected, failed)',
      labelNames: ['kind', 'outcome'],
      registers,
    });
    this.pushRetries = new Counter({ name: 'mollysocket_push_retries_total', help: 'Push requests that were retries', registers });
    this.pushDuration = new Histogram({
      name: 'mollysocket_push_duration_seconds',
      help: 'Time from sending a push request to its answer',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.leases = new Counter({
      name: 'mollysocket_lease_devices_total',
      help: 'Account devices whose ownership changed (several instances on PostgreSQL), by event: claimed, handed_over, lost, released',
      labelNames: ['event'],
      registers,
    });
    // rocket_prometheus's names, help texts and labels; the buckets are the Prometheus defaults it uses.
    this.httpRequests = new Counter({
      name: 'rocket_http_requests_total',
      help: 'Total number of HTTP requests',
      labelNames: ['endpoint', 'method', 'status'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'rocket_http_requests_duration_seconds',
      help: 'HTTP request duration in seconds for all requests',
      labelNames: ['endpoint', 'method', 'status'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
  }

  /** Where the connection counts come from once the supervisor is built. */
  watchStates(states: StateCounts): void {
    this.states = states;
  }

  /** Gauges of work waiting: pushes sent and waiting for a slot, and handshakes waiting for the connect ramp. */
  watchLoad(load: () => { pushesInFlight: number; pushesQueued: number; connectQueue: number }): void {
    const registers = [this.registry];
    const gauge = (name: string, help: string, read: (l: ReturnType<typeof load>) => number): void =>
      void new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read(load()));
        },
      });
    gauge('mollysocket_pushes_in_flight', 'Push requests under way', (l) => l.pushesInFlight);
    gauge('mollysocket_pushes_queued', 'Push requests waiting for a free slot (per origin or in all)', (l) => l.pushesQueued);
    gauge('mollysocket_connect_queue', 'Connections to Signal waiting for the connect ramp', (l) => l.connectQueue);
  }

  /**
   * How long this instance's lease still holds by its last confirmed renewal (several instances on PostgreSQL;
   * negative: lapsed that long ago). An alert on it going low catches a slow database or a starved event loop.
   */
  watchLease(remainingSeconds: () => number): void {
    void new Gauge({
      name: 'mollysocket_lease_remaining_seconds',
      help: "Seconds this instance's lease still holds, by its last renewal the database confirmed",
      registers: [this.registry],
      collect() {
        this.set(remainingSeconds());
      },
    });
  }

  /** Records one push request and its answer. `mollysocket_pushs` counts urgent wake-ups, as MollySocket does. */
  pushed(kind: PushKind, outcome: PushOutcome, seconds: number, retry: boolean): void {
    if (kind === 'urgent' && !retry) this.pushes.inc();
    this.pushResults.inc({ kind, outcome: outcome.kind });
    this.pushDuration.observe(seconds);
    if (retry) this.pushRetries.inc();
  }

  requestDone(endpoint: string, method: string, status: number, seconds: number): void {
    const labels = { endpoint, method, status: String(status) };
    this.httpRequests.inc(labels);
    this.httpDuration.observe(labels, seconds);
  }
}
