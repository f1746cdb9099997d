import { pino } from 'pino';
import type { RegistrationRequest, Registrations } from '../../src/registrations.js';
import { buildApp, type WebDeps } from '../../src/web/app.js';

export const TEST_VAPID_PUB = 'BOniQ9xHBPNY9gnQW4o-16vHqOb40pEIMifyUdFsxAgyzVkFMguxw0QrdbZcq8hRjN2zpeInRvKVPlkzABvuTnI';

/** The web app with registrations that answer `ok` and are recorded in `seen`; `over` replaces any dependency. */
export async function testApp(over: Partial<WebDeps> = {}) {
  const seen: RegistrationRequest[] = [];
  const registrations = { register: async (r: RegistrationRequest) => (seen.push(r), 'ok' as const) } as unknown as Registrations;
  const instance = await buildApp({
    registrations,
    vapidPublicKey: TEST_VAPID_PUB,
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
