import WebSocket from 'ws';
import type { Clock } from '../clock.js';
import type { LinkOptions } from '../signal/link.js';

/**
 * Whether Signal answers from here: a websocket upgrade without credentials (no login attempt), closed at once.
 * Any answer below 500 (101, 401, 403, ...) proves the way; a network error, a 5xx or no answer in time does not.
 */
export function probeSignal(opts: Pick<LinkOptions, 'url' | 'ca' | 'userAgent' | 'connectTimeoutMs'>, clock: Clock): Promise<boolean> {
  return new Promise((resolve) => {
    const ws = new WebSocket(opts.url, {
      headers: { 'User-Agent': opts.userAgent, 'X-Signal-Agent': 'OWA' },
      perMessageDeflate: false,
      ...(opts.ca && { ca: opts.ca }),
    });
    const done = (reached: boolean): void => {
      clock.clearTimeout(timer);
      ws.removeAllListeners();
      ws.on('error', () => {});
      ws.terminate();
      resolve(reached);
    };
    const timer = clock.setTimeout(() => done(false), opts.connectTimeoutMs);
    ws.on('open', () => done(true));
    ws.on('unexpected-response', (_req, res) => done((res.statusCode ?? 500) < 500));
    ws.on('error', () => done(false));
  });
}
