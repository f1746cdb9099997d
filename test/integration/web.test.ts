import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Registrations, RegistrationRequest } from '../../src/registrations.js';
import { buildApp } from '../../src/web/app.js';

const PUB = 'BOniQ9xHBPNY9gnQW4o-16vHqOb40pEIMifyUdFsxAgyzVkFMguxw0QrdbZcq8hRjN2zpeInRvKVPlkzABvuTnI';
const valid = { uuid: '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', device_id: 1, password: 'p', endpoint: 'https://e.example/x' };

async function app() {
  const seen: RegistrationRequest[] = [];
  const registrations = { register: async (r: RegistrationRequest) => (seen.push(r), 'ok' as const) } as unknown as Registrations;
  const instance = await buildApp({ registrations, vapidPublicKey: PUB, version: '9.9.9', log: pino({ level: 'silent' }) });
  return { instance, seen };
}

describe('web routes', () => {
  it('answers Molly and health checks with the version JSON, browsers with the homepage', async () => {
    const { instance } = await app();
    const molly = await instance.inject({ url: '/', headers: { 'user-agent': 'Signal-Android/7.20.0 Molly' } });
    expect(molly.json()).toEqual({ mollysocket: { version: '9.9.9' } });
    expect((await instance.inject({ url: '/discover' })).json()).toEqual({ mollysocket: { version: '9.9.9' } });
    const page = await instance.inject({ url: '/', headers: { 'user-agent': 'Mozilla/5.0', host: 'push.example' } });
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    expect(page.body).toContain(`mollysocket://link?vapid=${PUB}&amp;url=https%3A%2F%2Fpush.example%2F&amp;type=webserver`);
  });

  it('derives the link URL from Host and the path of X-Original-URL', async () => {
    const { instance } = await app();
    const page = await instance.inject({ url: '/?airgapped', headers: { host: 'example.org', 'x-original-url': '/molly/?x=1' } });
    expect(page.body).toContain('url=https%3A%2F%2Fexample.org%2Fmolly%2F&amp;type=webserver<');
  });

  it('passes a registration to the decision table and wraps its status', async () => {
    const { instance, seen } = await app();
    const res = await instance.inject({ method: 'POST', url: '/', headers: { 'content-type': 'application/json; charset=utf-8' }, payload: { ...valid, ping: true } });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ mollysocket: { version: '9.9.9', status: 'ok' } });
    expect(seen).toEqual([{ uuid: valid.uuid, deviceId: 1, password: 'p', endpoint: valid.endpoint, ping: true }]);
  });

  it('answers malformed input with 4xx and a JSON error, never a 5xx', async () => {
    const { instance, seen } = await app();
    const post = (payload: string, type = 'application/json') => instance.inject({ method: 'POST', url: '/', headers: { 'content-type': type }, payload });
    for (const bad of ['{', '[]', JSON.stringify({ ...valid, device_id: 0 }), JSON.stringify({ ...valid, device_id: '1' }),
      JSON.stringify({ ...valid, password: '' }), JSON.stringify({ ...valid, uuid: 'x'.repeat(65) }), JSON.stringify({ ...valid, ping: 'yes' })]) {
      const res = await post(bad);
      expect(res.statusCode, bad).toBe(400);
      expect(res.json()).toHaveProperty('error');
    }
    expect((await post('uuid=x', 'application/x-www-form-urlencoded')).statusCode).toBe(415);
    expect((await post(JSON.stringify({ ...valid, password: 'x'.repeat(10 * 1024 * 1024) }))).statusCode).toBe(413);
    expect(seen).toEqual([]);
  });
});
