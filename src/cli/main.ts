#!/usr/bin/env node
import { Command, type Option } from 'commander';
import { version } from '../paths.js';
import { reportError } from './common.js';
import { registerServer } from './server.js';
import { registerVapid } from './vapid.js';

const takesValue = (o: Option): boolean => o.required || o.optional;

/** Accepts unambiguous prefixes of subcommands (`vapid gen`, `conn list`), as MollySocket does. */
export function expandPrefixes(root: Command, args: string[]): string[] {
  const out = [...args];
  let current = root;
  for (let i = 0; i < out.length; i++) {
    const arg = out[i] as string;
    if (arg === '--') break;
    if (arg.startsWith('-')) {
      const option = current.options.find((o) => o.short === arg || o.long === arg);
      if (option && takesValue(option)) i++;
      continue;
    }
    const names = (c: Command): string[] => [c.name(), ...c.aliases()];
    const exact = current.commands.find((c) => names(c).includes(arg));
    const byPrefix = current.commands.filter((c) => names(c).some((n) => n.startsWith(arg)));
    const match = exact ?? (byPrefix.length === 1 ? byPrefix[0] : undefined);
    if (!match) break;
    out[i] = match.name();
    current = match;
  }
  return out;
}

export function buildProgram(): Command {
  const program = new Command('mollysocket')
    .description('Push relay for Molly: holds Signal connections and wakes the phone through UnifiedPush')
    .version(version)
    .option('-c, --config <file>', 'configuration file (else MOLLY_CONF, or the standard places)')
    .option('-v, --verbose', 'more logs: -v debug, -vv trace', (_v: string, previous: number) => previous + 1, 0)
    .showHelpAfterError()
    .exitOverride();
  registerServer(program);
  registerVapid(program);
  for (const cmd of program.commands) cmd.exitOverride();
  return program;
}

async function main(): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(expandPrefixes(program, process.argv.slice(2)), { from: 'user' });
  } catch (err) {
    process.exitCode = reportError(err);
  }
}

void main();
