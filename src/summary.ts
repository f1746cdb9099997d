import type { Clock, TimerHandle } from './clock.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';

/**
 * The log lines that show the work at info level, where a line per push or per registration would drown a busy server:
 * a start-up summary once the ramp is through, then one line every few minutes with the connection counts and what
 * happened since the last line. Failed and refused pushes still get a line each (src/push/notifier.ts); delivered
 * ones are counted here only.
 */

/** How often the summary line is logged. */
export const SUMMARY_INTERVAL_MS = 5 * 60_000;
/** How often the start-up summary looks whether the ramp is through. */
const START_POLL_MS = 1_000;

export interface ConnectionCounts {
  total: number;
  connecting: number;
  connected: number;
  backoff: number;
  forbidden: number;
}

/** Running totals since the start, as the metrics count them. */
export interface Totals {
  delivered: number;
  failed: number;
  retried: number;
  registrations: number;
}

/** The fields of one summary line: the counts now, and what the totals grew by since the last line. Pure. */
function summaryFields(counts: ConnectionCounts, now: Totals, before: Totals, periodMs: number) {
  return {
    connected: counts.connected,
    reconnecting: counts.connecting + counts.backoff,
    forbidden: counts.forbidden,
    pushes_delivered: now.delivered - before.delivered,
    pushes_failed: now.failed - before.failed,
    pushes_retried: now.retried - before.retried,
    registrations: now.registrations - before.registrations,
    period_s: Math.round(periodMs / 1000),
  };
}

/** The totals from the metrics: push requests by outcome (every kind), retries, registration requests (`POST /`). */
async function totalsOf(metrics: Metrics): Promise<Totals> {
  const results = (await metrics.pushResults.get()).values;
  const requests = (await metrics.httpRequests.get()).values;
  const sum = (values: { value: number }[]) => values.reduce((n, v) => n + v.value, 0);
  return {
    delivered: sum(results.filter((v) => v.labels.outcome === 'delivered')),
    failed: sum(results.filter((v) => v.labels.outcome !== 'delivered')),
    retried: sum((await metrics.pushRetries.get()).values),
    registrations: sum(requests.filter((v) => v.labels.endpoint === '/' && v.labels.method === 'POST')),
  };
}

export interface SummaryDeps {
  log: Logger;
  clock: Clock;
  counts(): ConnectionCounts;
  metrics: Metrics;
  intervalMs?: number;
}

/** Logs the start-up summary once no connection is still connecting, then a summary line every interval. */
export class Summary {
  private startTimer: TimerHandle | undefined;
  private lineTimer: TimerHandle | undefined;
  private stopped = false;
  private last: Totals = { delivered: 0, failed: 0, retried: 0, registrations: 0 };
  private lastAt: number;
  private readonly startedAt: number;

  constructor(private readonly deps: SummaryDeps) {
    this.startedAt = deps.clock.now();
    this.lastAt = this.startedAt;
  }

  /** Call once the connections have been started. */
  start(): void {
    this.startTimer = this.deps.clock.setTimeout(() => this.whenRampDone(), START_POLL_MS);
    this.scheduleLine(this.startedAt + this.interval - this.deps.clock.now());
  }

  stop(): void {
    this.stopped = true;
    this.deps.clock.clearTimeout(this.startTimer);
    this.deps.clock.clearTimeout(this.lineTimer);
  }

  private scheduleLine(ms: number): void {
    if (this.stopped) return;
    this.lineTimer = this.deps.clock.setTimeout(
      () => {
        this.line().catch((err: unknown) => this.deps.log.warn({ err }, 'cannot write the summary line'));
      },
      Math.max(0, ms),
    );
  }

  private whenRampDone(): void {
    const counts = this.deps.counts();
    if (counts.connecting > 0) {
      this.startTimer = this.deps.clock.setTimeout(() => this.whenRampDone(), START_POLL_MS);
      return;
    }
    const tookMs = this.deps.clock.now() - this.startedAt;
    this.deps.log.info(
      { stored: counts.total, connected: counts.connected, reconnecting: counts.backoff, forbidden: counts.forbidden, took_s: Math.round(tookMs / 100) / 10 },
      'start-up: every stored connection has been tried',
    );
  }

  private async line(): Promise<void> {
    const now = await totalsOf(this.deps.metrics);
    const at = this.deps.clock.now();
    this.deps.log.info(summaryFields(this.deps.counts(), now, this.last, at - this.lastAt), 'summary');
    this.last = now;
    this.lastAt = at;
    this.scheduleLine(this.interval);
  }

  private get interval(): number {
    return this.deps.intervalMs ?? SUMMARY_INTERVAL_MS;
  }
}
