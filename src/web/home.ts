import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';

const template = readFileSync(join(packageRoot, 'views', 'home.html'), 'utf8');

const escapeHtml = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);

/** Fills the homepage template. `qrSvg` is markup we generated; everything else is escaped. */
export function renderHome(view: { link: string; qrSvg: string; version: string }): string {
  return template
    .replace('{{qr_svg}}', () => view.qrSvg)
    .replace('{{link}}', () => escapeHtml(view.link))
    .replace('{{version}}', () => escapeHtml(view.version));
}
