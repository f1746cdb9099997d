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
 * Accepts unambiguous prefixes of subcommands (`vapid gen`, `conn list`), as MollySocket does. Returns the
 * arguments with prefixes spelled out, and the command path they name (for error hints).
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
    const exact = current.commands.find((c) => names(c).includes(arg));
    const byPrefix = current.commands.filter((c) => names(c).some((n) => n.startsWith(arg)));
    const match = exact ?? (byPrefix.length === 1 ? byPrefix[0] : undefined);
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
    .version(version)
    .option('-c, --config <file>', 'configuration file (else MOLLY_CONF, or the standard places)')
    .option('-v, --verbose', 'more logs: -v debug, -vv trace (else MOLLY_LOG or RUST_LOG)', (_v: string, previous: number) => previous + 1, 0)
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
