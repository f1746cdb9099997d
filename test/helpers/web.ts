import { pino } from 'pino';
import type { RegistrationRequest, Registrations } from '../../src/registrations.js';
import { buildApp, type WebDeps } from '../../src/web/app.js';
import { TEST_VAPID } from './index.js';

/** The web app with registrations that answer `ok` and are recorded in `seen`; `over` replaces any dependency. */
export async function testApp(over: Partial<WebDeps> = {}) {
  const seen: RegistrationRequest[] = [];
  const registrations = { register: async (r: RegistrationRequest) => (seen.push(r), 'ok' as const) } as unknown as Registrations;
  const instance = await buildApp({
    registrations,
    vapidPublicKey: TEST_VAPID.pub,
    version: '9.9.9',
    log: pino({ level: 'silent' }),
    publicUrl: undefined,
    trustProxy: false,
    rateLimitPerMinute: 120,
    ops: undefined,
    ...over,
  });
  return { instance, seen };
}

/** The mollysocket://link shown on a homepage, as the browser's text of it (tags such as <wbr> dropped). */
export const linkIn = (html: string): URL =>
  new URL(
    /<code id="link">(.*?)<\/code>/s
      .exec(html)![1]!
      .replace(/<[^>]*>/g, '')
      .replaceAll('&amp;', '&'),
  );
