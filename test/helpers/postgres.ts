import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import pg from 'pg';
import { inject } from 'vitest';

/** The private PostgreSQL the test run started (test/helpers/postgres-setup.ts), or why there is none. */
export const postgres = inject('postgres');
export const postgresMissing = 'missing' in postgres ? postgres.missing : undefined;
if (postgresMissing) process.stderr.write(`skipping the PostgreSQL cases: ${postgresMissing}\n`);

/** A new empty database on the private server; its URL. */
export async function freshDatabase(): Promise<string> {
  if (!('url' in postgres)) throw new Error(postgresMissing);
  const name = `t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: postgres.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return postgres.url.replace(/\/postgres$/, `/${name}`);
}

/** Every process of the private server (postmaster and its children), to freeze and thaw it. */
export function serverPids(): number[] {
  if (!('pids' in postgres)) return [];
  const parent = postgres.pids;
  const children = execFileSync('ps', ['-o', 'pid=', '--ppid', parent]).toString().trim().split(/\s+/).filter(Boolean);
  return [Number(parent), ...children.map(Number)];
}

/** SIGSTOP (freeze) or SIGCONT (thaw) the whole server. */
export function signalServer(signal: 'SIGSTOP' | 'SIGCONT'): void {
  for (const pid of serverPids()) {
    try {
      process.kill(pid, signal);
    } catch {
      // a backend that has just ended
    }
  }
}
