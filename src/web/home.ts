import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';
import { isGlobalAddress } from '../addresses.js';

const template = readFileSync(join(packageRoot, 'views', 'home.html'), 'utf8');

const inline = (tag: 'script' | 'style'): string => {
  const m = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(template);
  if (!m) throw new Error(`views/home.html has no <${tag}>`);
  return m[1] as string;
};
const sha256 = (text: string): string => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

/** CSP sources for the page's own inline script and style, and nothing else. */
export const HOME_HASHES = { script: sha256(inline('script')), style: sha256(inline('style')) };

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);

/**
 * The host of a server URL when a phone cannot reach it: `localhost` names, and IP addresses that are not globally
 * routable (loopback, private ranges). Such a link works only on this machine or its LAN. Pure.
 */
function unreachableHost(url: string): string | undefined {
  const { hostname, host } = new URL(url);
  const ip = hostname.replace(/^\[(.*)\]$/, '$1');
  if (hostname === 'localhost' || hostname.endsWith('.localhost')) return host;
  return isIP(ip) !== 0 && !isGlobalAddress(ip) ? host : undefined;
}

export interface HomeView {
  mode: 'webserver' | 'airgapped';
  /** The mollysocket://link shown and encoded in the QR code. */
  link: string;
  /** The server URL inside the link (webserver mode), checked against the browser's address by the page. */
  linkUrl: string | undefined;
  /** Headers from the reverse proxy that could not be used for the link. */
  unusableHeaders: string[];
  /** SVG markup that we generated. */
  qrSvg: string;
  version: string;
}

const TEXT = {
  webserver: {
    intro:
      'This server relays Signal notifications to Molly through UnifiedPush. In Molly, open Settings › Notifications, ' +
      'choose UnifiedPush as the delivery method, and scan this QR code, or copy the link below into Molly.',
    switchHref: '?airgapped',
    switchText: 'Use it in air-gapped mode instead',
  },
  airgapped: {
    intro:
      'Air-gapped mode: scan this code with Molly, which then shows a command, `connection add …`, to run on this ' +
      'server with `mollysocket`. Molly cannot update its registration by itself in this mode, so prefer the web ' +
      'server mode when this server is reachable.',
    switchHref: '?',
    switchText: 'Use it with the web server instead',
  },
};

/** Escaped text in which `this` reads as code, as the texts above are written. */
const withCode = (text: string): string => escapeHtml(text).replace(/`([^`]+)`/g, '<code>$1</code>');

/** Values too long for a phone's line (the key, the URL): they may break anywhere; the rest only after `?`, `&` and `=`. */
const BREAKABLE_VALUES = new Set(['vapid', 'url']);

/**
 * The link as markup a narrow screen breaks only where a person would: after `?`, `&` and `=` (`<wbr>`), and inside
 * the key and URL, which no screen of 360 px holds on one line. Its text is the link, unchanged. Pure.
 */
function linkMarkup(link: string): string {
  const at = link.indexOf('?');
  if (at < 0) return escapeHtml(link);
  const params = link
    .slice(at + 1)
    .split('&')
    .map((param) => {
      const eq = param.indexOf('=');
      if (eq < 0) return escapeHtml(param);
      const [name, value] = [param.slice(0, eq), param.slice(eq + 1)];
      const shown = BREAKABLE_VALUES.has(name) ? `<span class="any">${escapeHtml(value)}</span>` : escapeHtml(value);
      return `${escapeHtml(name)}=<wbr>${shown}`;
    });
  return `${escapeHtml(link.slice(0, at + 1))}<wbr>${params.join('&amp;<wbr>')}`;
}

const headerWarning = (names: string[]): string =>
  `<p id="header-warning" class="warning">The reverse proxy sent ${escapeHtml(names.join(', '))}, which could not be ` +
  'used for the link and was ignored: a host must be a plain name (with a port), a path must start with ' +
  '<code>/</code>, and the link is always https. Fix the proxy, or set <code>url</code> in the configuration.</p>';

/** Fills the homepage template; everything but the SVG we generated is escaped. */
export function renderHome(view: HomeView): string {
  const text = TEXT[view.mode];
  const unreachable = view.linkUrl === undefined ? undefined : unreachableHost(view.linkUrl);
  const values: Record<string, string> = {
    reach_warning:
      unreachable === undefined
        ? ''
        : `<p id="reach-warning" class="warning">The link above sends Molly to <b>${escapeHtml(unreachable)}</b>, an address ` +
          'a phone cannot reach. Open this page through the public https name of this server (the address of your ' +
          'reverse proxy), or set <code>url</code> in the configuration to that address.</p>',
    qr_svg: view.qrSvg,
    link: linkMarkup(view.link),
    link_url: escapeHtml(view.linkUrl ?? ''),
    intro: withCode(text.intro),
    switch_href: text.switchHref,
    switch_text: escapeHtml(text.switchText),
    header_warning: view.unusableHeaders.length === 0 ? '' : headerWarning(view.unusableHeaders),
    version: escapeHtml(view.version),
  };
  return template.replace(/\{\{(\w+)\}\}/g, (_, name: string) => values[name] ?? '');
}
