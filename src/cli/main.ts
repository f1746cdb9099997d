#!/usr/bin/env node
import { Command, type Option } from 'commander';
import { version } from '../paths.js';
import { reportError } from './common.js';
import { registerConfig } from './config.js';
import { registerConnection } from './connection.js';
import { registerDb } from './db.js';
import { registerQrcode } from './qrcode.js';
import { registerServer } from './server.js';
import { registerStatus } from './status.js';
import { registerTest } from './test.js';
import { registerVapid } from './vapid.js';

const takesValue = (o: Option): boolean => o.required || o.optional;
const names = (c: Command): string[] => [c.name(), ...c.aliases()];

/**
 * MollySocket's commands, by the path of their group. A prefix that selects one of these in MollySocket selects the
 * same here, even where a command of ours shares it (`c` is `connection`, not `config`; `s` is `server`).
 */
const MOLLYSOCKET_COMMANDS: Record<string, readonly string[]> = {
  '': ['server', 'vapid', 'qr-code', 'connection', 'test'],
  vapid: ['test', 'generate'],
  'qr-code': ['url', 'airgapped'],
  connection: ['add', 'list', 'remove', 'ping'],
  test: ['endpoint', 'uuid'],
};

/** The subcommand `arg` names: exactly, else as a prefix of only one of MollySocket's, else of only one of ours. */
function subcommandFor(group: Command, path: string[], arg: string): Command | undefined {
  const exact = group.commands.find((c) => names(c).includes(arg));
  if (exact) return exact;
  // As clap's infer_subcommands: a command matches when its name or one of its aliases starts with the prefix.
  const byPrefix = group.commands.filter((c) => names(c).some((n) => n.startsWith(arg)));
  const theirs = byPrefix.filter((c) => MOLLYSOCKET_COMMANDS[path.join(' ')]?.includes(c.name()));
  if (theirs.length === 1) return theirs[0];
  return byPrefix.length === 1 ? byPrefix[0] : undefined;
}

/**
 * Accepts prefixes of subcommands (`vapid gen`, `conn li`, `qr air`) as MollySocket does. Returns the arguments
 * with prefixes spelled out, and the command path they name (for error hints).
 */
export function expandPrefixes(root: Command, args: string[]): { args: string[]; path: string[] } {
  const out = [...args];
  const path: string[] = [];
  let current = root;
  for (let i = 0; i < out.length; i++) {
    const arg = out[i] as string;
    if (arg === '--') break;
    if (arg.startsWith('-')) {
      const option = current.options.find((o) => o.short === arg || o.long === arg);
      if (option && takesValue(option)) i++;
      continue;
    }
    const match = subcommandFor(current, path, arg);
    if (!match) break;
    out[i] = match.name();
    path.push(match.name());
    current = match;
  }
  return { args: out, path };
}

export function buildProgram(): Command {
  const program = new Command('mollysocket')
    .description('Push relay for Molly: holds Signal connections and wakes the phone through UnifiedPush')
    // As clap prints it for MollySocket: the name, then the version (package.json's, the one version everywhere).
    .version(`mollysocket ${version}`, '-V, --version')
    .option('-c, --config <file>', 'configuration file (else MOLLY_CONF, or the standard places)')
    .option(
      '-v, --verbose',
      'server logs: -v info, -vv debug, -vvv trace (else MOLLY_LOG or RUST_LOG; else errors only)',
      (_v: string, previous: number) => previous + 1,
      0,
    )
    // Errors are printed by reportError, on one line; subcommands inherit both settings.
    .configureOutput({ outputError: () => {} })
    .exitOverride();
  registerServer(program);
  registerConnection(program);
  registerTest(program);
  registerVapid(program);
  registerQrcode(program);
  registerConfig(program);
  registerStatus(program);
  registerDb(program);
  return program;
}

async function main(): Promise<void> {
  // Output piped into `head` and closed early is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  const program = buildProgram();
  const { args, path } = expandPrefixes(program, process.argv.slice(2));
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    process.exitCode = reportError(err, path.join(' ') || '');
  }
}

void main();
