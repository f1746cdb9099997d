import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import pg from 'pg';
import { inject } from 'vitest';

/** The private PostgreSQL the test run started (test/helpers/postgres-setup.ts), or why there is none. */
export const postgres = inject('postgres');
export const postgresMissing = 'missing' in postgres ? postgres.missing : undefined;
if (postgresMissing) process.stderr.write(`skipping the PostgreSQL cases: ${postgresMissing}\n`);

/** A new empty database on the private server; its URL. */
export async function freshDatabase(adminUrl = 'url' in postgres ? postgres.url : undefined): Promise<string> {
  if (!adminUrl) throw new Error(postgresMissing);
  const name = `t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return adminUrl.replace(/\/postgres$/, `/${name}`);
}

/** SIGSTOP (freeze) or SIGCONT (thaw) every process of a PostgreSQL server: the postmaster and its children. */
export function signalServer(postmaster: number, signal: 'SIGSTOP' | 'SIGCONT'): void {
  const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(postmaster)])
    .toString()
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map(Number);
  for (const pid of [postmaster, ...children]) {
    try {
      process.kill(pid, signal);
    } catch {
      // a backend that has just ended
    }
  }
}
