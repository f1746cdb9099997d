import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { LRUCache } from 'lru-cache';
import pLimit, { type LimitFunction } from 'p-limit';
import { parseRetryAfter } from '../http.js';
import type { EndpointPolicy } from '../policy.js';
import type { ResolvedAddress } from '../resolver.js';

/**
 * One POST to a UnifiedPush endpoint (docs/protocol.md section 3), its answer classified. It never retries, never
 * follows a redirect, and connects only to the address the endpoint policy checked.
 */

export type PushKind = 'urgent' | 'test' | 'delivery_check';

const MESSAGES: Record<PushKind, { body: string; topic: string }> = {
  urgent: { body: '{"urgent":true}', topic: 'mollysocket' },
  test: { body: '{"test":true}', topic: 'test' },
  delivery_check: { body: '{"code":4409}', topic: '4409' },
};

export type PushOutcome =
  /** 2xx */
  | { kind: 'delivered'; status: number }
  /** 404, 410: the distributor unregistered the endpoint. */
  | { kind: 'gone'; status: number }
  /** 429: try again after `retryAfterMs` when the server said. */
  | { kind: 'rate_limited'; status: number; retryAfterMs: number | undefined }
  /** 3xx (redirects are not followed), 403 and other 4xx, an endpoint the policy refuses: the same push will not succeed. */
  | { kind: 'rejected'; status?: number; reason?: string }
  /** 5xx, timeouts, network and DNS errors: worth retrying. */
  | { kind: 'failed'; status?: number; error?: string; retryAfterMs?: number };

function classify(status: number, retryAfter: string | undefined, nowMs: number): PushOutcome {
  if (status >= 200 && status < 300) return { kind: 'delivered', status };
  if (status === 404 || status === 410) return { kind: 'gone', status };
  if (status === 429) return { kind: 'rate_limited', status, retryAfterMs: parseRetryAfter(retryAfter, nowMs) };
  if (status >= 500) {
    const retryAfterMs = parseRetryAfter(retryAfter, nowMs);
    return { kind: 'failed', status, ...(retryAfterMs !== undefined && { retryAfterMs }) };
  }
  return { kind: 'rejected', status };
}

export interface PushClientOptions {
  policy: EndpointPolicy;
  /** The VAPID Authorization header for an endpoint, when a key is configured. */
  authorization?: (endpoint: string) => string;
  /** Deadline for the whole request, name resolution and connection included. */
  timeoutMs: number;
  /** Pushes under way at once to one origin, and in all; more wait their turn. */
  maxPerOrigin?: number;
  maxTotal?: number;
  /** A kept-alive socket idle this long is closed. */
  idleSocketMs?: number;
}

/** Push servers answer with little; a longer answer is cut off here. */
const MAX_RESPONSE_BYTES = 64 * 1024;
/** Origins whose agent (and idle sockets) are kept; the least recently used beyond this are closed. */
const MAX_ORIGINS = 256;

/**
 * A DNS lookup that answers the address already checked: no second resolution, no rebinding. It answers on the
 * next tick, never synchronously: a connect error raised from inside a synchronous lookup would be emitted before
 * the request has its error listener, and end the process.
 */
const pinnedLookup =
  (pinned: ResolvedAddress): LookupFunction =>
  (_hostname, options, callback) => {
    process.nextTick(() => {
      if ((options as { all?: boolean }).all) callback(null, [{ address: pinned.address, family: pinned.family }]);
      else callback(null, pinned.address, pinned.family);
    });
  };

/** Rejects with the signal's reason once it aborts. */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

type Agent = http.Agent | https.Agent;

export class PushClient {
  /** One keep-alive agent per recently used origin: push servers are few, and each is asked often. */
  private readonly agents: LRUCache<string, Agent>;
  private readonly perOrigin: LRUCache<string, LimitFunction>;
  private readonly total: LimitFunction;
  private active = 0;

  constructor(private readonly opts: PushClientOptions) {
    this.agents = new LRUCache<string, Agent>({ max: MAX_ORIGINS, dispose: (agent) => agent.destroy() });
    // An evicted limit is still honoured by the pushes already holding it; new pushes to that origin get a new one.
    this.perOrigin = new LRUCache<string, LimitFunction>({ max: MAX_ORIGINS });
    this.total = pLimit(opts.maxTotal ?? 256);
  }

  /** Pushes being sent, and waiting for a free slot. */
  load(): { inFlight: number; queued: number } {
    return { inFlight: this.active, queued: this.total.pendingCount + [...this.perOrigin.values()].reduce((n, l) => n + l.pendingCount, 0) };
  }

  /** Every failure, of any kind, becomes an outcome: a push never throws. */
  async send(endpoint: string, kind: PushKind, signal?: AbortSignal): Promise<PushOutcome> {
    let origin: string;
    try {
      origin = new URL(endpoint).origin;
    } catch {
      return { kind: 'rejected', reason: 'not a URL' };
    }
    let limit = this.perOrigin.get(origin);
    if (!limit) this.perOrigin.set(origin, (limit = pLimit(this.opts.maxPerOrigin ?? 16)));
    return limit(() =>
      this.total(async () => {
        if (signal?.aborted) return { kind: 'failed', error: 'cancelled' } as const;
        this.active++;
        try {
          return await this.attempt(endpoint, kind, signal);
        } catch (err) {
          return { kind: 'failed', error: (err as Error).message };
        } finally {
          this.active--;
        }
      }),
    );
  }

  private async attempt(endpoint: string, kind: PushKind, cancel: AbortSignal | undefined): Promise<PushOutcome> {
    const deadline = AbortSignal.timeout(this.opts.timeoutMs);
    const signal = cancel ? AbortSignal.any([cancel, deadline]) : deadline;
    const failure = (err: unknown): PushOutcome => ({
      kind: 'failed',
      error: deadline.aborted ? `no answer within ${this.opts.timeoutMs} ms` : (err as Error).message,
    });
    let target: Awaited<ReturnType<EndpointPolicy['check']>>;
    try {
      target = await untilAborted(this.opts.policy.check(endpoint), signal);
    } catch (err) {
      return failure(err);
    }
    if (!target.ok) {
      return target.transient ? { kind: 'failed', error: target.reason } : { kind: 'rejected', reason: target.reason };
    }
    const { url, address } = target;
    const { body, topic } = MESSAGES[kind];
    const headers: http.OutgoingHttpHeaders = {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
      'Content-Encoding': 'aes128gcm',
      TTL: '2592000',
      Urgency: 'high',
      Topic: topic,
    };
    const authorization = this.opts.authorization?.(endpoint);
    if (authorization) headers.Authorization = authorization;
    const isHttps = url.protocol === 'https:';

    return new Promise((resolve) => {
      let settled = false;
      const settle = (outcome: PushOutcome): void => {
        if (settled) return;
        settled = true;
        resolve(outcome);
      };
      const req = (isHttps ? https : http).request(url, {
        method: 'POST',
        headers,
        agent: this.agent(url.origin, isHttps),
        lookup: pinnedLookup(address),
        signal,
      });
      req.on('error', (err) => settle(failure(err)));
      req.on('response', (res) => {
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > MAX_RESPONSE_BYTES) res.destroy();
        });
        res.on('error', () => {}); // the status is known; an answer cut off is still an answer
        const done = (): void => settle(classify(res.statusCode ?? 0, res.headers['retry-after'], Date.now()));
        res.on('end', done);
        res.on('close', done);
      });
      req.end(body);
    });
  }

  private agent(origin: string, isHttps: boolean): Agent {
    let agent = this.agents.get(origin);
    if (!agent) {
      const options = { keepAlive: true, maxFreeSockets: 16, timeout: this.opts.idleSocketMs ?? 30_000 };
      agent = isHttps ? new https.Agent(options) : new http.Agent(options);
      this.agents.set(origin, agent);
    }
    return agent;
  }

  close(): void {
    this.agents.clear(); // disposes: every agent destroyed
    this.perOrigin.clear();
  }
}
