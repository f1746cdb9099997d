import { createPublicKey, verify } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { EventWaiters } from './events.js';
import type { AddressInfo } from 'node:net';

/**
 * A fake UnifiedPush server: records every request, answers from a script (default 201), and checks the VAPID
 * header the way push services do (RFC 8292), independently of src/.
 */

export interface PushRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  vapid: VapidCheck;
  /** The client's port: the same for requests over one kept-alive connection. */
  remotePort: number | undefined;
  /** When it arrived (performance.now()). */
  at: number;
}

export type VapidCheck = { ok: true; publicKey: string; claims: { aud: string; exp: number; sub: string } } | { ok: false; error: string };

export type ScriptedAnswer =
  /** `after`: answer only once it settles (a push server that answers late). */
  | { status: number; headers?: Record<string, string>; body?: string; after?: Promise<unknown> }
  /** Never answer: the request hangs until the client gives up. */
  | { hang: true }
  /** Answer, then stream a body that never ends, until the client closes the connection. */
  | { status: number; endless: true };

/** Verifies `Authorization: vapid t=<JWT>, k=<key>` for this audience at `nowSeconds`. */
export function checkVapid(header: string | undefined, audience: string, nowSeconds: number): VapidCheck {
  const m = /^vapid t=([\w-]+\.[\w-]+\.[\w-]+), k=([\w-]+)$/.exec(header ?? '');
  if (!m) return { ok: false, error: `malformed Authorization header: ${header ?? '(none)'}` };
  const [, jwt, k] = m as unknown as [string, string, string];
  const raw = Buffer.from(k, 'base64url');
  if (raw.length !== 65 || raw[0] !== 4) return { ok: false, error: 'k is not an uncompressed P-256 point' };
  const key = createPublicKey({
    format: 'jwk',
    key: { kty: 'EC', crv: 'P-256', x: raw.subarray(1, 33).toString('base64url'), y: raw.subarray(33).toString('base64url') },
  });
  const [h, p, s] = jwt.split('.') as [string, string, string];
  const header_ = JSON.parse(Buffer.from(h, 'base64url').toString()) as { alg?: string };
  if (header_.alg !== 'ES256') return { ok: false, error: `alg ${header_.alg}` };
  const sig = Buffer.from(s, 'base64url');
  if (sig.length !== 64) return { ok: false, error: 'signature is not 64 bytes' };
  if (!verify('sha256', Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' }, sig)) {
    return { ok: false, error: 'bad signature' };
  }
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as { aud: string; exp: number; sub: string };
  if (claims.aud !== audience) return { ok: false, error: `aud ${claims.aud}, expected ${audience}` };
  if (!(claims.exp > nowSeconds && claims.exp <= nowSeconds + 24 * 3600)) return { ok: false, error: `exp ${claims.exp}` };
  if (!/^(https:|mailto:)/.test(claims.sub ?? '')) return { ok: false, error: `sub ${claims.sub}` };
  return { ok: true, publicKey: k, claims };
}

export class FakePushServer {
  readonly requests: PushRequest[] = [];
  /** Answers for the next requests, consumed in order; then `defaultStatus`. */
  readonly script: ScriptedAnswer[] = [];
  defaultStatus = 201;
  private readonly hanging: ServerResponse[] = [];
  /** Connections open now, as the server sees them. */
  openConnections = 0;
  /** Bytes written of endless answers. */
  endlessBytes = 0;
  private readonly waiters = new EventWaiters('fake push server');

  private constructor(private readonly server: Server) {}

  static async start(): Promise<FakePushServer> {
    const server = createServer();
    const fake = new FakePushServer(server);
    server.on('connection', (socket) => {
      fake.openConnections++;
      socket.on('close', () => fake.openConnections--);
    });
    server.on('request', (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        fake.requests.push({
          method: req.method ?? '',
          path: req.url ?? '',
          headers: req.headers,
          body: Buffer.concat(chunks).toString(),
          vapid: checkVapid(req.headers.authorization, fake.origin, Math.floor(Date.now() / 1000)),
          remotePort: req.socket.remotePort,
          at: performance.now(),
        });
        fake.waiters.notify();
        const answer = fake.script.shift() ?? { status: fake.defaultStatus };
        if ('hang' in answer) {
          fake.hanging.push(res);
          return;
        }
        if ('endless' in answer) {
          const chunk = Buffer.alloc(16 * 1024, 'x');
          res.writeHead(answer.status);
          const pump = (): void => {
            while (!res.destroyed && res.write(chunk)) fake.endlessBytes += chunk.length;
            if (!res.destroyed) res.once('drain', pump);
          };
          pump();
          fake.hanging.push(res);
          return;
        }
        const send = (): void => void res.writeHead(answer.status, answer.headers).end(answer.body);
        if (answer.after) void answer.after.then(send);
        else send();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return fake;
  }

  get origin(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** An endpoint URL on this server; the path stands for the distributor's token. */
  endpoint(token = 'up-token'): string {
    return `${this.origin}/up/${token}`;
  }

  until(predicate: () => boolean, what = 'condition', timeoutMs = 20_000): Promise<void> {
    return this.waiters.until(predicate, what, timeoutMs);
  }

  bodies(): string[] {
    return this.requests.map((r) => r.body);
  }

  async close(): Promise<void> {
    for (const res of this.hanging) res.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
