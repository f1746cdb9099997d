import { existsSync } from 'node:fs';
import { join } from 'node:path';
import jsQR from 'jsqr';
import { chromium, type Browser } from 'playwright-core';
import { PNG } from 'pngjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { memoryLogger, tempDir } from '../helpers/index.js';

/** Debian's Chromium (`.ci/run` installs it). Without it the browser test cannot run: CI fails, a laptop skips. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && process.env.CI) throw new Error(`the browser test needs Chromium at ${CHROMIUM}: apt-get install chromium`);
if (!haveChromium) console.warn(`browser test skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);

/** Molly's acceptance rules for a scanned link (docs/protocol.md section 1). */
function mollyAccepts(text: string): { ok: boolean; url?: URL } {
  const link = new URL(text);
  if (link.protocol !== 'mollysocket:' || link.host !== 'link') return { ok: false };
  if (!/^[A-Za-z0-9_-]{87}$/.test(link.searchParams.get('vapid') ?? '')) return { ok: false };
  const type = link.searchParams.get('type');
  if (type === 'airgapped') return { ok: !link.searchParams.has('url') };
  if (type !== 'webserver') return { ok: false };
  const url = new URL(link.searchParams.get('url') ?? 'invalid:');
  return { ok: url.protocol === 'https:', url };
}

async function startWith(env: Record<string, string>): Promise<RunningServer> {
  const { config } = loadConfig({ env: { XDG_CONFIG_HOME: '/nonexistent', MOLLY_PORT: '0', MOLLY_DB: join(tempDir(), 'm.db'), ...env } });
  return startServer(config, memoryLogger().log);
}

describe.skipIf(!haveChromium)('the homepage in a browser', () => {
  let browser: Browser;
  let server: RunningServer;

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    server = await startWith({});
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  /** Opens a page, screenshots the QR code and decodes it as a phone camera would. */
  async function scan(url: string) {
    const page = await browser.newPage({ colorScheme: 'dark' }); // the page stays light whatever the theme
    const errors: string[] = [];
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    await page.goto(url);
    const png = PNG.sync.read(await page.locator('.qr').screenshot());
    // No inversion: a light-on-dark code (a page that followed the dark theme) must not count as scanned.
    const code = jsQR.default(new Uint8ClampedArray(png.data), png.width, png.height, { inversionAttempts: 'dontInvert' });
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const warnings = {
      proxy: await page.locator('#proxy-warning').isVisible(),
      https: await page.locator('#https-warning').isVisible(),
      reach: await page.locator('#reach-warning').isVisible(),
    };
    await page.close();
    return { text: code?.data, warnings, errors, background };
  }

  it('shows a QR code that Molly accepts, pointing at the address the page was opened at', async () => {
    const { text, warnings, errors, background } = await scan(`${server.url}/`);
    expect(background).toBe('rgb(255, 255, 255)'); // light, though the browser asks for a dark theme
    expect(text).toBeDefined();
    const verdict = mollyAccepts(text!);
    expect(verdict.ok).toBe(true);
    const opened = new URL(`${server.url}/`);
    expect(verdict.url?.host).toBe(opened.host);
    expect(verdict.url?.pathname).toBe(opened.pathname);
    expect(new URL(text!).searchParams.get('vapid')).toBe(server.vapidPublicKey);
    // Opened over plain http on 127.0.0.1: the page says Molly needs https, and that a phone cannot reach this address.
    expect(warnings).toEqual({ proxy: false, https: true, reach: true });
    expect(errors).toEqual([]); // no CSP violation, no missing resource
  });

  it('says that a phone cannot reach a loopback address even without JavaScript', async () => {
    const context = await browser.newContext({ javaScriptEnabled: false });
    const page = await context.newPage();
    await page.goto(`${server.url}/`);
    expect(await page.locator('#reach-warning').innerText()).toMatch(/^The link above sends Molly to 127\.0\.0\.1:\d+, an address a phone cannot reach\./);
    await context.close();
  });

  it('shows the air-gapped link on ?airgapped', async () => {
    const { text } = await scan(`${server.url}/?airgapped`);
    expect(mollyAccepts(text!)).toEqual({ ok: true });
    expect(new URL(text!).searchParams.get('type')).toBe('airgapped');
  });

  it.each(['/', '/?airgapped'])('on a 360 px phone (%s), breaks the link only after ? & = or inside the key and URL, and shows code as code', async (query) => {
    const page = await browser.newPage({ viewport: { width: 360, height: 740 } });
    await page.goto(`${server.url}${query}`);
    const seen = await page.evaluate(() => {
      const link = document.getElementById('link')!;
      // Each character's line (its box's top), and whether it sits in a value that may break anywhere.
      const chars: { c: string; top: number; any: boolean }[] = [];
      const walker = document.createTreeWalker(link, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const any = node.parentElement!.classList.contains('any');
        for (let i = 0; i < node.textContent!.length; i++) {
          const range = document.createRange();
          range.setStart(node, i);
          range.setEnd(node, i + 1);
          chars.push({ c: node.textContent![i]!, top: Math.round(range.getClientRects()[0]!.top), any });
        }
      }
      const breaks: string[] = []; // the text around each line break
      for (let i = 1; i < chars.length; i++) {
        if (chars[i]!.top !== chars[i - 1]!.top && !(chars[i]!.any && chars[i - 1]!.any)) breaks.push(chars[i - 1]!.c + '|' + chars[i]!.c);
      }
      return {
        text: link.textContent,
        lines: new Set(chars.map((c) => c.top)).size,
        breaks,
        overflow: document.documentElement.scrollWidth > window.innerWidth,
        backticks: document.querySelector('main')!.innerText.includes('`'),
        code: [...document.querySelectorAll('main p:first-of-type code')].map((c) => c.textContent),
      };
    });
    await page.close();
    expect(seen.lines).toBeGreaterThan(1); // the link does not fit on one line at this width
    for (const b of seen.breaks) expect(b, `a break at ${b}`).toMatch(/^[?&=]\|/);
    expect(seen.overflow).toBe(false);
    expect(mollyAccepts(seen.text!).ok).toBe(true); // the text is the link, whole
    expect(seen.backticks).toBe(false);
    expect(seen.code).toEqual(query === '/' ? [] : ['connection add …', 'mollysocket']);
  });

  it("warns, through its own script under the page's CSP, when the link points elsewhere than the browser's address", async () => {
    const proxied = await startWith({ MOLLY_URL: 'https://push.example.org/molly/' });
    try {
      const { text, warnings } = await scan(`${proxied.url}/`);
      expect(mollyAccepts(text!).url?.toString()).toBe('https://push.example.org/molly/');
      expect(warnings.proxy).toBe(true);
      expect(warnings.reach).toBe(false); // the url setting names a public address
    } finally {
      await proxied.close();
    }
  });
});
