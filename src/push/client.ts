import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import type { EndpointPolicy, ResolvedAddress } from '../policy.js';

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

/** Parses Retry-After: delay-seconds or an HTTP date. */
export function parseRetryAfter(value: string | undefined, nowMs: number): number | undefined {
  if (value === undefined) return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

export function classify(status: number, retryAfter: string | undefined, nowMs: number): PushOutcome {
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
  /** Deadline for the whole request, connection included. */
  timeoutMs: number;
}

/** Push servers answer with little; a longer answer is cut off here. */
const MAX_RESPONSE_BYTES = 64 * 1024;

/** A DNS lookup that always answers the address already checked: no second resolution, no rebinding. */
const pinnedLookup =
  (pinned: ResolvedAddress): LookupFunction =>
  (_hostname, options, callback) => {
    if ((options as { all?: boolean }).all) callback(null, [{ address: pinned.address, family: pinned.family }]);
    else callback(null, pinned.address, pinned.family);
  };

export class PushClient {
  /** One keep-alive agent per origin: push servers are few, and each is asked often. */
  private readonly agents = new Map<string, http.Agent>();

  constructor(private readonly opts: PushClientOptions) {}

  async send(endpoint: string, kind: PushKind, signal?: AbortSignal): Promise<PushOutcome> {
    const target = await this.opts.policy.check(endpoint);
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
      const req = (isHttps ? https : http).request(url, {
        method: 'POST',
        headers,
        agent: this.agent(url.origin, isHttps),
        lookup: pinnedLookup(address),
        ...(signal && { signal }),
      });
      const deadline = setTimeout(() => req.destroy(new Error(`no answer within ${this.opts.timeoutMs} ms`)), this.opts.timeoutMs);
      const settle = (outcome: PushOutcome): void => {
        clearTimeout(deadline);
        resolve(outcome);
      };
      req.on('response', (res) => {
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > MAX_RESPONSE_BYTES) res.destroy();
        });
        const header = res.headers['retry-after'];
        const done = (): void => settle(classify(res.statusCode ?? 0, header, Date.now()));
        res.on('end', done);
        res.on('close', done);
      });
      req.on('error', (err) => settle({ kind: 'failed', error: err.message }));
      req.end(body);
    });
  }

  private agent(origin: string, isHttps: boolean): http.Agent {
    let agent = this.agents.get(origin);
    if (!agent) {
      const options = { keepAlive: true, maxFreeSockets: 16 };
      agent = isHttps ? new https.Agent(options) : new http.Agent(options);
      this.agents.set(origin, agent);
    }
    return agent;
  }

  close(): void {
    for (const agent of this.agents.values()) agent.destroy();
    this.agents.clear();
  }
}
