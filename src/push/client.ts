import http from 'node:http';
import https from 'node:https';

/** One POST to a UnifiedPush endpoint (PROTOCOL.md section 3), its answer classified. It never retries. */

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
  /** Other 4xx (and 3xx: redirects are never followed): the same message will not succeed. */
  | { kind: 'rejected'; status: number }
  /** 5xx, timeouts, network errors: worth retrying. */
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
  /** The VAPID Authorization header for an endpoint, when a key is configured. */
  authorization?: (endpoint: string) => string;
  timeoutMs?: number;
}

/** Push servers answer with little; anything beyond this is not read. */
const MAX_RESPONSE_BYTES = 64 * 1024;

export class PushClient {
  private readonly agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };

  constructor(private readonly opts: PushClientOptions = {}) {}

  send(endpoint: string, kind: PushKind): Promise<PushOutcome> {
    const { body, topic } = MESSAGES[kind];
    const url = new URL(endpoint);
    const isHttps = url.protocol === 'https:';
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

    return new Promise((resolve) => {
      const req = (isHttps ? https : http).request(url, {
        method: 'POST',
        headers,
        agent: isHttps ? this.agents.https : this.agents.http,
        timeout: this.opts.timeoutMs ?? 10_000,
      });
      req.on('response', (res) => {
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > MAX_RESPONSE_BYTES) res.destroy();
        });
        const done = (): void => resolve(classify(res.statusCode ?? 0, res.headers['retry-after'], Date.now()));
        res.on('end', done);
        res.on('close', done);
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (err) => resolve({ kind: 'failed', error: err.message }));
      req.end(body);
    });
  }

  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }
}
