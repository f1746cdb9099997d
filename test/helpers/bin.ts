import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../../src/paths.js';

/** The built `mollysocket` bin, as npm links it (npm test builds first). */
export const BIN = join(packageRoot, 'dist', 'cli', 'main.js');

/** A clean environment: no MOLLY_* of the developer's, no config file found by accident. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: '/nonexistent', XDG_CONFIG_HOME: '/nonexistent' };
  return { ...env, ...extra };
}

/** Runs the bin to its end. Asynchronous, so that fakes in this process keep answering meanwhile. */
export function runBin(args: string[], opts: { cwd: string; env?: Record<string, string> }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd, env: cleanEnv(opts.env), timeout: 20_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * A long-running bin (the server), with its stderr log collected. Logs at info unless the test sets MOLLY_LOG
 * (the server's own default is errors only), so that `url()` can read where it listens.
 */
export class BinProcess {
  readonly child: ChildProcessWithoutNullStreams;
  stderr = '';
  stdout = '';
  readonly exited: Promise<number | null>;

  constructor(args: string[], opts: { cwd: string; env?: Record<string, string> }) {
    this.child = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd, env: cleanEnv({ MOLLY_LOG: 'info', ...opts.env }) });
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.child.stdout.on('data', (d: Buffer) => (this.stdout += d.toString()));
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  /** Waits for a log line matching `re` and returns the match. */
  async waitFor(re: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.stderr.match(re);
      if (m) return m;
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(`no log line matching ${re}; stderr:\n${this.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** The URL the web server listens on, from its log. */
  async url(): Promise<string> {
    return (await this.waitFor(/"url":"(http:\/\/[^"]+)","version"/))[1] as string;
  }

  stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    this.child.kill(signal);
    return this.exited;
  }
}
