import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../src/paths.js';

/** One `Key=value` line of a unit file, with its section. */
export interface UnitEntry {
  section: string;
  key: string;
  value: string;
}

/** The entries of one of this repository's unit files, in order (comments and blank lines left out). */
export function unitEntries(name: string): UnitEntry[] {
  const entries: UnitEntry[] = [];
  let section = '';
  for (const line of readFileSync(join(packageRoot, name), 'utf8').split('\n')) {
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#') || trimmed.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(trimmed);
    if (header) section = header[1]!;
    else entries.push({ section, key: trimmed.slice(0, trimmed.indexOf('=')), value: trimmed.slice(trimmed.indexOf('=') + 1) });
  }
  return entries;
}

/** The values of `key` in a unit's entries. */
export const unitValues = (entries: UnitEntry[], key: string): string[] => entries.filter((e) => e.key === key).map((e) => e.value);

/** `Environment=` lines as variables (each line one `NAME=value`, as in this repository's units). */
export function unitEnvironment(entries: UnitEntry[]): Record<string, string> {
  return Object.fromEntries(unitValues(entries, 'Environment').map((v) => [v.slice(0, v.indexOf('=')), v.slice(v.indexOf('=') + 1)]));
}

const ESCAPES: Record<string, string> = { "'": "'", '"': '"', '\\': '\\', n: '\n', t: '\t' };

/** A command line split into words as systemd splits ExecStart=: quotes group, backslash escapes inside them. */
export function execWords(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === ' ') i++;
    if (i >= line.length) break;
    let word = '';
    const quote = line[i] === "'" || line[i] === '"' ? line[i++] : undefined;
    while (i < line.length && (quote ? line[i] !== quote : line[i] !== ' ')) {
      if (line[i] === '\\') {
        const escaped = ESCAPES[line[i + 1] ?? ''];
        if (escaped === undefined) throw new Error(`unknown escape \\${line[i + 1]} in ${line}`);
        word += escaped;
        i += 2;
      } else word += line[i++];
    }
    if (quote) i++; // the closing quote
    words.push(word);
  }
  return words;
}
