import { spawn } from 'node:child_process';

/**
 * Other work on the host: `count` processes that spin on the CPU at normal priority, until `stop`. Started together
 * and running once `cpuHogs` resolves.
 */
export async function cpuHogs(count: number): Promise<{ stop(): Promise<void> }> {
  const hogs = Array.from({ length: count }, () =>
    spawn(process.execPath, ['-e', 'process.stdout.write("spinning\\n"); for (;;) {}'], { stdio: ['ignore', 'pipe', 'ignore'] }),
  );
  await Promise.all(hogs.map((h) => new Promise((resolve) => h.stdout.once('data', resolve))));
  return {
    stop: async () => {
      await Promise.all(
        hogs.map((h) => {
          if (h.exitCode !== null) return undefined;
          const exited = new Promise((resolve) => h.once('exit', resolve));
          h.kill('SIGKILL');
          return exited;
        }),
      );
    },
  };
}
