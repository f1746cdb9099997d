import { pino, type Logger } from 'pino';

export type { Logger };

/** -v: debug, -vv and more: trace; default info. Logs go to stderr so stdout stays for command output. */
export function createLogger(verbosity = 0, destination: number = 2): Logger {
  const level = verbosity >= 2 ? 'trace' : verbosity === 1 ? 'debug' : 'info';
  return pino({ level, base: undefined }, pino.destination({ fd: destination, sync: true }));
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
