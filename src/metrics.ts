import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PushKind, PushOutcome } from './push/client.js';

/** Connection counts by state, read when metrics are collected. */
export type StateCounts = () => { connected: number; forbidden: number };

/**
 * Prometheus metrics. The first five keep MollySocket's names and meaning, which dashboards already use;
 * none has a per-account label.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly reconnections: Counter;
  readonly messages: Counter;
  readonly pushes: Counter;
  readonly pushResults: Counter<'kind' | 'outcome'>;
  readonly pushRetries: Counter;
  readonly pushDuration: Histogram;
  readonly leases: Counter<'event'>;

  constructor(states: StateCounts = () => ({ connected: 0, forbidden: 0 })) {
    const registers = [this.registry];
    new Gauge({
      name: 'mollysocket_connections',
      help: 'Connections to Signal server',
      registers,
      collect() {
        this.set(states().connected);
      },
    });
    new Gauge({
      name: 'mollysocket_forbiddens',
      help: 'Forbidden connections to Signal server',
      registers,
      collect() {
        this.set(states().forbidden);
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
  }

  /** Records one push request and its answer. */
  pushed(kind: PushKind, outcome: PushOutcome, seconds: number, retry: boolean): void {
    this.pushes.inc();
    this.pushResults.inc({ kind, outcome: outcome.kind });
    this.pushDuration.observe(seconds);
    if (retry) this.pushRetries.inc();
  }
}
