import { pino, type Logger } from 'pino';

export type { Logger };

const LEVELS = ['silent', 'error', 'warn', 'info', 'debug', 'trace'];

/** A level from MOLLY_LOG (`debug`) or RUST_LOG (`debug`, `mollysocket=debug,info`), for MollySocket's guides. */
function levelFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const molly = env.MOLLY_LOG?.trim().toLowerCase();
  if (molly && LEVELS.includes(molly)) return molly;
  const directives = (env.RUST_LOG ?? '').toLowerCase().split(',').map((d) => d.trim());
  const ours = directives.find((d) => d.startsWith('mollysocket='))?.split('=')[1];
  const level = ours ?? directives.find((d) => !d.includes('='));
  if (level === 'off') return 'silent';
  return level && LEVELS.includes(level) ? level : undefined;
}

/** -v debug, -vv and more trace; else MOLLY_LOG or RUST_LOG; else info. */
export function logLevel(verbosity: number, env: NodeJS.ProcessEnv = process.env): string {
  if (verbosity >= 2) return 'trace';
  if (verbosity === 1) return 'debug';
  return levelFromEnv(env) ?? 'info';
}

/**
 * Secrets never logged: the code logs neither, and these paths are the backstop should an object carrying one be
 * logged whole by mistake.
 */
export const REDACTED_PATHS = ['password', '*.password', 'vapid_privkey', '*.vapid_privkey', 'privateKey', '*.privateKey'];

/** Logs go to stderr so that stdout stays for command output. Errors go under `err` (pino's serializer keeps the cause). */
export function createLogger(verbosity = 0): Logger {
  return pino(
    { level: logLevel(verbosity), base: undefined, redact: { paths: REDACTED_PATHS, censor: '(redacted)' } },
    pino.destination({ fd: 2, sync: true }),
  );
}

/** First 8 characters of a UUID: enough to tell accounts apart in logs, not enough to identify one. */
export const shortUuid = (uuid: string): string => `${uuid.slice(0, 8)}…`;

/** The origin of an endpoint: the rest of a UnifiedPush URL is a bearer token and never logged. */
export function endpointOrigin(endpoint: string): string {
  try {
    return new URL(endpoint).origin;
  } catch {
    return '(invalid url)';
  }
}
