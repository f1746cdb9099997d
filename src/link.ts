import QRCode from 'qrcode';

/** The `mollysocket://link` URL that Molly scans (docs/protocol.md section 1), and its QR code. */

export type LinkTarget = { type: 'webserver'; url: string } | { type: 'airgapped' };

export function linkUrl(vapidPublicKey: string, target: LinkTarget): string {
  // Parameter order as MollySocket writes it: vapid, url, type.
  const params = new URLSearchParams({ vapid: vapidPublicKey });
  if (target.type === 'webserver') params.set('url', target.url);
  params.set('type', target.type);
  return `mollysocket://link?${params.toString()}`;
}

/** An SVG QR code, dark on light whatever the page's theme (dark-theme codes do not scan). */
export function qrSvg(text: string): Promise<string> {
  return QRCode.toString(text, { type: 'svg', errorCorrectionLevel: 'M', margin: 4, color: { dark: '#000000', light: '#ffffff' } });
}

/** A QR code drawn with the block characters █ ▀ ▄, for terminals, logs and ssh sessions. */
export function qrTerminal(text: string): Promise<string> {
  return QRCode.toString(text, { type: 'utf8', errorCorrectionLevel: 'M', margin: 2 });
}
