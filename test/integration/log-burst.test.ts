import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';

/** Logs go to a pipe that journald or Docker may read late: a burst must wait for it, never throw. */
describe('logging into a pipe read late', () => {
  it.each(['text', 'json'])('writes every line of a burst in %s, and the process carries on', async (format) => {
    const script = `
      const { createLogger } = await import(${JSON.stringify(join(packageRoot, 'dist', 'log.js'))});
      const log = createLogger({ verbosity: 1, format: ${JSON.stringify(format)} });
      for (let i = 0; i < 2000; i++) log.info({ i, pad: 'x'.repeat(200) }, 'burst');
      console.log('done');`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stderr.pause(); // nobody reads for a while: the pipe fills up
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    await new Promise((r) => setTimeout(r, 300));
    let lines = 0;
    child.stderr.on('data', (d: Buffer) => (lines += d.toString().split('\n').length - 1));
    child.stderr.resume();
    const code = await new Promise((r) => child.on('close', r));
    expect(code).toBe(0);
    expect(stdout).toBe('done\n');
    expect(lines).toBe(2000);
  });
});

describe('an error in the text log', () => {
  it('keeps its stack and cause on the one line of its event', async () => {
    const script = `
      const { createLogger } = await import(${JSON.stringify(join(packageRoot, 'dist', 'log.js'))});
      const log = createLogger({ verbosity: 0, format: 'text' });
      log.error({ err: new Error('outer', { cause: new Error('inner') }) }, 'request failed');`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    await new Promise((r) => child.on('close', r));
    expect(stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/request failed .*outer.*\\n +at .*inner/);
  });
});
