import { isatty } from 'node:tty';
import { pino, type Logger } from 'pino';
import { prettyFactory } from 'pino-pretty';

export type { Logger };

const LEVELS = ['silent', 'error', 'warn', 'info', 'debug', 'trace'];

/** A level from MOLLY_LOG (`debug`) or RUST_LOG (`debug`, `mollysocket=debug,info`), for MollySocket's guides. */
function levelFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const molly = env.MOLLY_LOG?.trim().toLowerCase();
  if (molly && LEVELS.includes(molly)) return molly;
  const directives = (env.RUST_LOG ?? '')
    .toLowerCase()
    .split(',')
    .map((d) => d.trim());
  const ours = directives.find((d) => d.startsWith('mollysocket='))?.split('=')[1];
  const level = ours ?? directives.find((d) => !d.includes('='));
  if (level === 'off') return 'silent';
  return level && LEVELS.includes(level) ? level : undefined;
}

/**
 * As MollySocket: -v info, -vv debug, -vvv trace; MOLLY_LOG or RUST_LOG, whichever is more verbose; else errors only.
 */
export function logLevel(verbosity: number, env: NodeJS.ProcessEnv = process.env): string {
  const fromFlag = verbosity > 0 ? LEVELS[Math.min(verbosity + 2, LEVELS.length - 1)] : undefined;
  const fromEnv = levelFromEnv(env);
  const candidates = [fromFlag, fromEnv].filter((l): l is string => l !== undefined);
  return candidates.length === 0 ? 'error' : candidates.reduce((a, b) => (LEVELS.indexOf(a) >= LEVELS.indexOf(b) ? a : b));
}

/**
 * Secrets never logged: the code logs neither, and these paths are the backstop should an object carrying one be
 * logged whole by mistake.
 */
const REDACTED_PATHS = ['password', '*.password', 'vapid_privkey', '*.vapid_privkey', 'privateKey', '*.privateKey'];

export type LogFormat = 'text' | 'json';

/**
 * Logs go to stderr, one line per event, so that stdout stays for command output; errors go under `err` (pino's
 * serializer keeps the cause). Text (the default, as MollySocket's logs read in journalctl or `docker compose
 * logs`): time, level, message and fields on one line, coloured only on a terminal. JSON: one object per line.
 * Written synchronously, so nothing is lost when the process exits.
 */
export function createLogger(opts: { verbosity: number; format: LogFormat }): Logger {
  const options = { level: logLevel(opts.verbosity), base: undefined, redact: { paths: REDACTED_PATHS, censor: '(redacted)' } };
  // SonicBoom, synchronous: it waits out a full pipe (EAGAIN) and finishes partial writes, where a bare writeSync
  // would throw out of the logging call.
  const destination = pino.destination({ fd: 2, sync: true });
  // JSON names the level ("level":"info"), as log collectors expect; the fields are listed in docs/logs.md.
  if (opts.format === 'json') return pino({ ...options, formatters: { level: (label) => ({ level: label }) } }, destination);
  const pretty = prettyFactory({
    colorize: isatty(2), // not process.stderr.isTTY: creating that stream makes a piped fd 2 non-blocking
    singleLine: true,
    errorLikeObjectKeys: [], // an error's stack stays inside the line (escaped), as JSON keeps it, not spread over 15
    // UTC ISO 8601 with milliseconds, as translateTime "UTC:yyyy-mm-dd'T'HH:MM:ss.l'Z'" writes it, at a tenth of its cost
    translateTime: false,
    customPrettifiers: { time: (time) => `[${new Date(Number(time)).toISOString()}]` },
  });
  return pino(options, { write: (line: string) => void destination.write(pretty(line)) });
}

/**
 * For a line the operator must see whatever the level (a new file to back up): logged at info, even when the log
 * shows errors only.
 */
export const unmuted = (log: Logger): Logger => (log.isLevelEnabled('info') ? log : log.child({}, { level: 'info' }));

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
