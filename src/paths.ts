import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The package root, whether running from src/ (tests) or dist/ (the bin). */
export const packageRoot = fileURLToPath(new URL('../', import.meta.url));

export const version: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
