// npm run build && node bench/soak.mjs [--minutes 30] [--accounts 400]
// A churn soak: the relay runs for the given time while accounts register (HTTP) and are removed (CLI), the fake
// Signal server closes sockets and sends envelopes, and the fake push server answers. Its RSS and open file
// descriptors are sampled every minute; the samples go to bench/results/soak.json and the start and end are printed.
import { execFileSync, fork, spawn } from 'node:child_process';
import { mkdirSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pki, rpc, rss, sleep, until } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({ options: { minutes: { type: 'string', default: '30' }, accounts: { type: 'string', default: '400' } } });
const MINUTES = Number(args.minutes);
const POOL = Number(args.accounts);
const bin = join(here, '..', 'dist', 'cli', 'main.js');
const work = join(here, '..', '.bench-tmp', 'soak');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const certs = pki(join(work, 'pki'));
const accounts = Array.from({ length: POOL }, (_, i) => ({
  uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
  deviceId: 1,
  password: `soak-password-${i}-xxxxxxxx`,
}));
writeFileSync(join(work, 'accounts.json'), JSON.stringify(accounts));

const children = new Set();
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));
const track = (child) => (children.add(child), child.once('exit', () => children.delete(child)), child);
async function start(script, env) {
  const child = track(fork(join(here, script), { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] }));
  const ready = await new Promise((resolve) => child.once('message', resolve));
  return { call: rpc(child), port: ready.port };
}
const signal = await start('signal-server.mjs', { ACCOUNTS_FILE: join(work, 'accounts.json'), KEY_FILE: certs.keyFile, CERT_FILE: certs.certFile });
const push = await start('push-server.mjs', {});
const pushOrigin = `http://127.0.0.1:${push.port}`;
const env = {
  PATH: process.env.PATH,
  MOLLY_PORT: '0',
  MOLLY_DB: join(work, 'soak.db'),
  MOLLY_SIGNAL_URL: `wss://127.0.0.1:${signal.port}/v1/websocket/`,
  MOLLY_SIGNAL_CA_FILE: certs.caFile,
  MOLLY_ALLOWED_ENDPOINTS: `["${pushOrigin}"]`,
  MOLLY_REGISTRATION_RATE_LIMIT: '0',
  MOLLY_LOG: 'info',
};
const logFile = join(work, 'relay.log');
const relay = track(spawn(process.execPath, [bin, 'server'], { cwd: work, env, stdio: ['ignore', 'ignore', openSync(logFile, 'w')] }));
let url;
await until(
  () => {
    const m = /http:\/\/127\.0\.0\.1:\d+/.exec(execFileSync('cat', [logFile], { encoding: 'utf8' }));
    url = m?.[0];
    return url !== undefined;
  },
  'the relay listening',
  30_000,
);

const register = (a) =>
  fetch(`${url}/`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ uuid: a.uuid, device_id: a.deviceId, password: a.password, endpoint: `${pushOrigin}/up/${a.uuid}` }),
  })
    .then((r) => r.json())
    .then(
      (j) => j.mollysocket.status,
      (e) => String(e),
    );
const remove = (a) =>
  new Promise((resolve) => track(spawn(process.execPath, [bin, 'connection', 'remove', a.uuid], { cwd: work, env, stdio: 'ignore' })).once('exit', resolve));
const sample = () => ({
  minute: (Date.now() - startedAt) / 60_000,
  rssMB: Math.round(rss(relay.pid) / 1e5) / 10,
  fds: readdirSync(`/proc/${relay.pid}/fd`).length,
});

const registered = new Set();
for (const a of accounts.slice(0, POOL / 2)) if ((await register(a)) === 'ok') registered.add(a);
await until(async () => (await signal.call('stats')).open >= registered.size, 'the first half connected', 120_000);
const startedAt = Date.now();
const samples = [sample()];
const counts = { registrations: 0, removals: 0, kicks: 0, envelopes: 0, failedRegistrations: 0 };
const endAt = startedAt + MINUTES * 60_000;
let nextSample = startedAt + 60_000;
for (let tick = 0; Date.now() < endAt; tick++) {
  // Every second: two registrations (new accounts or repeats), envelopes to 20 accounts; every 5 s a removal and
  // five sockets closed by Signal.
  for (let i = 0; i < 2; i++) {
    const a = accounts[Math.floor(Math.random() * POOL)];
    const status = await register(a);
    counts.registrations++;
    if (status === 'ok') registered.add(a);
    else counts.failedRegistrations++;
  }
  await signal.call('steady', { rate: 1000, count: 20 });
  counts.envelopes += 20;
  if (tick % 5 === 0) {
    const victim = [...registered][Math.floor(Math.random() * registered.size)];
    if (victim) {
      await remove(victim);
      registered.delete(victim);
      counts.removals++;
    }
    await signal.call('kick', { count: 5 });
    counts.kicks += 5;
  }
  if (Date.now() >= nextSample) {
    samples.push(sample());
    nextSample += 60_000;
    console.error(`soak: ${JSON.stringify(samples.at(-1))}`);
  }
  await sleep(1000);
}
samples.push(sample());
const result = { minutes: MINUTES, pool: POOL, counts, registeredAtEnd: registered.size, samples, pushes: await push.call('count') };
mkdirSync(join(here, 'results'), { recursive: true });
writeFileSync(join(here, 'results', 'soak.json'), `${JSON.stringify(result, null, 2)}\n`);
console.log(
  `soak ${MINUTES} min: RSS ${samples[0].rssMB} -> ${samples.at(-1).rssMB} MB, fds ${samples[0].fds} -> ${samples.at(-1).fds}; ${JSON.stringify(counts)}`,
);
relay.kill('SIGTERM');
await sleep(3000);
process.exit(0);
