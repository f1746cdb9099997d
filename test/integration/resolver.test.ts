import { createSocket, type Socket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { createResolver, parseHosts } from '../../src/resolver.js';
import { startServer } from '../../src/server.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { FakePushServer } from '../fakes/push-server.js';
import { memoryLogger, tempDir } from '../helpers/index.js';

/** A DNS server on loopback that reads every query and never answers, as an unreachable name server does. */
async function blackholeDns(): Promise<{ socket: Socket; address: string; queries: () => number }> {
  const socket = createSocket('udp4');
  let queries = 0;
  socket.on('message', () => queries++);
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return { socket, address: `127.0.0.1:${socket.address().port}`, queries: () => queries };
}

describe('resolving push endpoint names', () => {
  let dns: Awaited<ReturnType<typeof blackholeDns>>;
  let hostsFile: string;

  beforeEach(async () => {
    dns = await blackholeDns();
    hostsFile = join(tempDir(), 'hosts');
    writeFileSync(hostsFile, '# a comment\n127.0.0.1 localhost push.test # trailing comment\n::1 push.test\n');
  });
  afterEach(() => dns.socket.close());

  it('parses a hosts file: every name of a line, both families, comments ignored', () => {
    const hosts = parseHosts('10.0.0.1 a.test B.test\n# 10.0.0.2 c.test\nnot-an-ip d.test\nfd00::1 a.test\n');
    expect(hosts.get('a.test')).toEqual([
      { address: '10.0.0.1', family: 4 },
      { address: 'fd00::1', family: 6 },
    ]);
    expect(hosts.get('b.test')).toEqual([{ address: '10.0.0.1', family: 4 }]);
    expect(hosts.has('c.test')).toBe(false);
    expect(hosts.has('d.test')).toBe(false);
  });

  it('answers a name from the hosts file while names whose DNS never answers are pending, and gives those up in bounded time', async () => {
    const resolve = createResolver({ timeoutMs: 400, tries: 1, servers: [dns.address], hostsFile });
    let settled = 0;
    const slow = Array.from({ length: 8 }, (_, i) =>
      resolve(`slow${i}.test`)
        .then(
          () => 'resolved',
          (err: NodeJS.ErrnoException) => err.code,
        )
        .finally(() => settled++),
    );
    expect(await resolve('PUSH.test')).toEqual([
      { address: '127.0.0.1', family: 4 },
      { address: '::1', family: 6 },
    ]);
    expect(settled).toBe(0); // the slow names hold nothing up
    expect(await Promise.all(slow)).toEqual(Array(8).fill('ETIMEOUT'));
    expect(dns.queries()).toBeGreaterThanOrEqual(8);
  });

  it('lets a registration through while others wait on a name server that never answers', async () => {
    const push = await FakePushServer.start();
    const signal = await FakeSignalServer.start({ tls: false });
    signal.addAccount({ uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', deviceId: 1, password: 'pw' });
    const port = new URL(push.origin).port;
    const { config } = loadConfig({
      env: {
        XDG_CONFIG_HOME: '/nonexistent',
        MOLLY_PORT: '0',
        MOLLY_DB: join(tempDir(), 'mollysocket.db'),
        MOLLY_SIGNAL_URL: signal.url,
        MOLLY_ALLOWED_ENDPOINTS: JSON.stringify(['*', `http://push.test:${port}`]),
      },
    });
    const resolver = createResolver({ timeoutMs: 1_500, tries: 1, servers: [dns.address], hostsFile });
    const server = await startServer(config, memoryLogger().log, { resolver });
    const register = (uuid: string, endpoint: string): Promise<string> =>
      fetch(`${server.url}/`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ uuid, device_id: 1, password: 'pw', endpoint }),
      })
        .then((r) => r.json() as Promise<{ mollysocket: { status: string } }>)
        .then((j) => j.mollysocket.status);
    try {
      let slowAnswered = 0;
      const slow = Array.from({ length: 8 }, (_, i) =>
        register(`00000000-0000-4000-8000-00000000000${i}`, `https://slow${i}.test/up`).finally(() => slowAnswered++),
      );
      await new Promise((r) => setTimeout(r, 50)); // the slow registrations are waiting on DNS
      expect(await register('6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', `http://push.test:${port}/up/t`)).toBe('ok');
      expect(slowAnswered).toBe(0);
      await push.until(() => push.requests.length === 1, 'its test push');
      // A name that cannot be resolved says nothing about the endpoint: Molly is told to try again later.
      expect(await Promise.all(slow)).toEqual(Array(8).fill('internal_error'));
    } finally {
      await server.close();
      await push.close();
      await signal.close();
    }
  });
});
