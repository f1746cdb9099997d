import type { Command } from 'commander';
import { linkUrl, qrTerminal, type LinkTarget } from '../link.js';
import { loadFor, print, UsageError, vapidKey, withStore } from './common.js';

async function show(cmd: Command, target: LinkTarget): Promise<void> {
  const loaded = loadFor(cmd);
  const key = await withStore(loaded, 'read', (_store, backend) => vapidKey(loaded, backend));
  const link = linkUrl(key.publicKey, target);
  print(`${await qrTerminal(link)}\n${link}`);
}

export function registerQrcode(program: Command): void {
  // MollySocket's name (clap kebab-cases its QRCode command); `qrcode` as this project first spelled it.
  const qrcode = program.command('qr-code').alias('qrcode').description('the link and QR code to scan with Molly');
  qrcode
    .command('url')
    .description('for a server reached at this https URL')
    .argument('<url>', 'the https URL of this server, as Molly will reach it')
    .action(async (url: string, _o, cmd: Command) => {
      if (!URL.canParse(url) || new URL(url).protocol !== 'https:') {
        throw new UsageError(`url ${url} must be an https URL (Molly refuses others), like https://molly.example.org/`);
      }
      await show(cmd, { type: 'webserver', url });
    });
  qrcode
    .command('airgapped')
    .description('for air-gapped mode (register with `connection add`)')
    .action(async (_o, cmd: Command) => show(cmd, { type: 'airgapped' }));
}
