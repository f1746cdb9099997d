import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { BIN } from '../helpers/bin.js';
import { tempDir } from '../helpers/index.js';

/**
 * Scenarios that need a network of the test's own: a namespace with only loopback (`unshare --net`) and its own
 * /etc/hosts (bind-mounted in a private mount namespace). Needs root (CI runs as root); elsewhere it skips.
 */
const canUnshare = spawnSync('unshare', ['--net', '--mount', 'true']).status === 0;
if (!canUnshare && process.env.CI) throw new Error('the network-namespace test needs `unshare --net --mount` (root)');
if (!canUnshare) console.warn('network-namespace test skipped: `unshare --net --mount` is not permitted here (run as root)');

function inNamespace(hosts: string, script: string, args: string[]): string {
  const dir = tempDir();
  const hostsFile = join(dir, 'hosts');
  writeFileSync(hostsFile, hosts);
  const shell = 'mount --bind "$0" /etc/hosts && ip link set lo up && exec "$@"';
  const run = spawnSync('unshare', ['--net', '--mount', 'sh', '-c', shell, hostsFile, process.execPath, script, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (run.status !== 0) throw new Error(`namespace run failed (${run.status}): ${run.stderr}`);
  return run.stdout;
}

describe.skipIf(!canUnshare)('in a network namespace with only loopback', () => {
  it('survives a registration whose endpoint name resolves only to an unroutable address', () => {
    const out = inNamespace('127.0.0.1 localhost\n2606:4700:4700::1111 unroutable.example\n', join(packageRoot, 'test', 'fixtures', 'netns-registration.mjs'), [
      BIN,
      tempDir(),
      'https://unroutable.example/push/abc',
    ]);
    const result = JSON.parse(out.trim().split('\n').pop() as string);
    expect(result.error).toBeUndefined();
    expect(result.registration).toBe('ok');
    expect(result.pushFailureLogged).toBe(true); // the test push failed, and is retried
    expect(result.discoverAfter).toBe(200); // the server still answers
    expect(result.exitCode).toBeNull(); // it was still running when the scenario ended
  });
});
