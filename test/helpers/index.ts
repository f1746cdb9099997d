import { mkdtempSync } from 'node:fs';
import { request, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';

export const tempDir = (prefix = 'ms-test-'): string => mkdtempSync(join(tmpdir(), prefix));

/** A logger that keeps its lines in memory, so tests can assert on them (and on what they must not contain). */
export function memoryLogger(): { log: pino.Logger; lines: () => string[] } {
  const chunks: string[] = [];
  const log = pino({ level: 'trace' }, { write: (s: string) => void chunks.push(s) });
  return { log, lines: () => chunks };
}

/** A GET with any headers, Host included (fetch does not let a caller set Host). */
export function httpGet(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Polls `predicate` on real time until it holds: for effects of real I/O under a manual clock. The bound only ends a
 * test that would otherwise hang; it is generous, as a busy machine is slow. */
export async function eventually(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000, everyMs = 5): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Lets every promise callback already queued run, and those they queue in turn (no I/O, no timers): enough for code
 * driven by a manual clock and answered in memory, where nothing else can still be on its way.
 */
export const flushPromises = (): Promise<void> => new Promise((r) => setImmediate(r));

/** The VAPID test vector of docs/protocol.md: a private key and its public key. */
export const TEST_VAPID = {
  priv: 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI',
  pub: 'BOniQ9xHBPNY9gnQW4o-16vHqOb40pEIMifyUdFsxAgyzVkFMguxw0QrdbZcq8hRjN2zpeInRvKVPlkzABvuTnI',
};
/** Two account UUIDs for tests through the bin. */
export const TEST_UUIDS = ['6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f'] as const;
