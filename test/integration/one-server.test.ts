import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BinProcess, runBin } from '../helpers/bin.js';
import { eventually, TEST_VAPID, tempDir } from '../helpers/index.js';
import { freshDatabase, postgresMissing } from '../helpers/postgres.js';

/** One server per database: a second one is refused at once, a crashed one never blocks the next. */
const procs: BinProcess[] = [];
const server = (cwd: string, env: Record<string, string> = {}): BinProcess => {
  const p = new BinProcess(['server'], { cwd, env: { MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: TEST_VAPID.priv, ...env } });
  procs.push(p);
  return p;
};

afterEach(async () => {
  for (const p of procs.splice(0)) if (p.child.exitCode === null && p.child.signalCode === null) await p.stop('SIGKILL');
});

describe('one server per SQLite database', () => {
  it('refuses a second server on the same file (exit 2, naming the database and the pid), and never calls the first an unclean stop', async () => {
    const cwd = tempDir();
    const first = server(cwd);
    const url = await first.url();

    const second = await runBin(['server'], { cwd, env: { MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: TEST_VAPID.priv, MOLLY_LOG: 'info' } });
    expect(second.code).toBe(2);
    expect(second.stderr).toContain(
      `mollysocket: another mollysocket server is running on the database ${join(cwd, 'mollysocket.db')} (pid ${first.child.pid}, since `,
    );
    expect(second.stderr).not.toMatch(/did not end cleanly/);
    expect(second.stderr.trim().split('\n')).toHaveLength(1);

    // The first runs on, untouched, and its stop is clean.
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect(await first.stop()).toBe(0);
    const third = server(cwd);
    await third.url();
    expect(third.stderr).not.toMatch(/did not end cleanly/);
    expect(await third.stop()).toBe(0);
  }, 60_000);

  it('takes over after kill -9 at once: the next start runs and says, truly, that the last run did not end cleanly', async () => {
    const cwd = tempDir();
    const first = server(cwd);
    await first.url();
    // Killed once it has published its heartbeat (what an unclean stop leaves behind), however slow its start.
    await eventually(async () => /^server: running/.test((await runBin(['status'], { cwd })).stdout), 'the first server running', 30_000, 100);
    await first.stop('SIGKILL');
    const next = server(cwd);
    await next.url();
    await next.waitFor(/did not end cleanly/);
    expect(await next.stop()).toBe(0);
  }, 60_000);
});

describe.skipIf(postgresMissing !== undefined)('one instance per instance_name on PostgreSQL', () => {
  it('refuses a second live instance with the same name (exit 2, naming it and its pid), and lets a restart after kill -9 start', async () => {
    const cwd = tempDir();
    const env = { MOLLY_DB: await freshDatabase(), MOLLY_LEASE_SECONDS: '2', MOLLY_INSTANCE_NAME: 'relay-a' };
    const first = server(cwd, env);
    await first.waitFor(/joined the cluster/);

    const second = await runBin(['server'], { cwd, env: { ...env, MOLLY_PORT: '0', MOLLY_VAPID_PRIVKEY: TEST_VAPID.priv } });
    expect(second.code).toBe(2);
    expect(second.stderr).toMatch(
      new RegExp(
        `^mollysocket: another instance named "relay-a" is running on the database postgres://\\S+ \\(pid ${first.child.pid}, since .*\\): each instance needs its own instance_name`,
      ),
    );

    const other = server(cwd, { ...env, MOLLY_INSTANCE_NAME: 'relay-b' }); // another name joins as before
    await other.waitFor(/joined the cluster/);

    await first.stop('SIGKILL'); // its row stays live until its lease runs out
    const restarted = server(cwd, env);
    await restarted.waitFor(/joined the cluster/, 30_000);
  }, 90_000);
});
