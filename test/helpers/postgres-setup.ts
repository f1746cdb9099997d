import type { TestProject } from 'vitest/node';
import { startPostgres } from './private-postgres.mjs';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The private PostgreSQL server's admin URL, or why there is none. */
    postgres: { url: string; pid: number } | { missing: string };
  }
}

/** One private PostgreSQL for the whole test run, stopped at its end. */
export default async function setup(project: TestProject): Promise<() => void> {
  const server = await startPostgres();
  if (!server) {
    if (process.env.CI) throw new Error('PostgreSQL is not installed (Debian package postgresql): .ci/run installs it');
    project.provide('postgres', { missing: 'PostgreSQL is not installed (apt-get install postgresql)' });
    return () => {};
  }
  project.provide('postgres', { url: server.url, pid: server.pid });
  return server.stop;
}
