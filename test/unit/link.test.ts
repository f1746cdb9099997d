import { describe, expect, it } from 'vitest';
import { linkUrl, qrSvg, qrTerminal } from '../../src/link.js';

const PUB = 'BOniQ9xHBPNY9gnQW4o-16vHqOb40pEIMifyUdFsxAgyzVkFMguxw0QrdbZcq8hRjN2zpeInRvKVPlkzABvuTnI';

/** Molly's acceptance rules for a scanned link. */
function mollyAccepts(text: string): boolean {
  const url = new URL(text);
  if (url.protocol !== 'mollysocket:' || url.host !== 'link') return false;
  if (!/^[A-Za-z0-9_-]{87}$/.test(url.searchParams.get('vapid') ?? '')) return false;
  const type = url.searchParams.get('type');
  if (type === 'airgapped') return !url.searchParams.has('url');
  return type === 'webserver' && new URL(url.searchParams.get('url') ?? 'x:').protocol === 'https:';
}

describe('mollysocket://link', () => {
  it('carries the VAPID key and the https url for the webserver mode', () => {
    const link = linkUrl(PUB, { type: 'webserver', url: 'https://molly.example/sub/path/' });
    expect(link.startsWith('mollysocket://link?')).toBe(true);
    const params = new URL(link).searchParams;
    expect(params.get('vapid')).toBe(PUB);
    expect(params.get('type')).toBe('webserver');
    expect(params.get('url')).toBe('https://molly.example/sub/path/');
    expect(mollyAccepts(link)).toBe(true);
  });

  it('has no url in air-gapped mode', () => {
    const link = linkUrl(PUB, { type: 'airgapped' });
    expect(link).toBe(`mollysocket://link?vapid=${PUB}&type=airgapped`);
    expect(mollyAccepts(link)).toBe(true);
  });

  it('draws the QR code as SVG and with block characters', async () => {
    const link = linkUrl(PUB, { type: 'airgapped' });
    expect(await qrSvg(link)).toMatch(/^<svg[\s\S]*<\/svg>\s*$/);
    const text = await qrTerminal(link);
    expect(text).toMatch(/[█▀▄]/);
    expect(text.split('\n').length).toBeGreaterThan(20);
  });
});
