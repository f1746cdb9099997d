import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';

export const tempDir = (prefix = 'ms-test-'): string => mkdtempSync(join(tmpdir(), prefix));

/** A logger that keeps its lines in memory, so tests can assert on them (and on what they must not contain). */
export function memoryLogger(): { log: pino.Logger; lines: () => string[] } {
  const chunks: string[] = [];
  const log = pino({ level: 'trace' }, { write: (s: string) => void chunks.push(s) });
  return { log, lines: () => chunks };
}
