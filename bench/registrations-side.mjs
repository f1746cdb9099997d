// npm run bench:registrations-side -- --old <an earlier build's dist> [--rounds 3] [--batch 100] [--repeat 5] [--cpu-prof]
// Registrations through HTTP, the earlier build against this one, alternately (old, new, old, new, ...), each round
// on a fresh relay and database, against a fake Signal server that accepts every credential and a fake push server:
//   new devices: `batch` devices registered 8 at a time (this build asks Signal about each new device, at most 8
//     questions at once: more at once are answered internal_error, try again later);
//   re-registrations: the same devices again, all at once (Molly's routine re-registration on unlock: identical);
//   new endpoints: the same devices with a new endpoint each, all at once (stored, test push);
// the last two `repeat` times each, alternately, keeping each round's fastest batch.
// Each device is a phone at its own loopback address. Times each batch from the first request sent to the last answer. Writes bench/results/registrations-side.json.
import { spawn } from 'node:child_process';
import { mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import os from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { acceptingServers, freePort, now, percentile, sleep, until } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    old: { type: 'string' },
    new: { type: 'string', default: join(here, '..', 'dist') },
    rounds: { type: 'string', default: '3' },
    batch: { type: 'string', default: '100' },
    repeat: { type: 'string', default: '5' },
    'cpu-prof': { type: 'boolean', default: false },
  },
});
if (!args.old) throw new Error('--old <dist directory of the earlier build> is required');
const BUILDS = { old: resolve(args.old), new: resolve(args.new) };
const ROUNDS = Number(args.rounds);
const BATCH = Number(args.batch);
const REPEAT = Number(args.repeat);
const VAPID = 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI';

const work = join(here, '..', '.bench-tmp', 'registrations-side');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

const servers = await acceptingServers();
const { signalUrl, pushOrigin } = servers;

/** One phone per loopback address (127.0.1.x): the relay holds at most 64 connections for one client address. */
const agents = new Map();
const agentFor = (address) => {
  if (!agents.has(address)) agents.set(address, new Agent({ keepAlive: true, localAddress: address }));
  return agents.get(address);
};

function post(url, { from, ...body }) {
  const started = now();
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', agent: agentFor(from), headers: { 'Content-Type': 'application/json' } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ ms: now() - started, status: JSON.parse(Buffer.concat(chunks).toString()).mollysocket.status }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** `bodies` posted `inFlight` at a time: the time from the first request to the last answer, and each request's. */
async function batch(url, bodies, inFlight = bodies.length) {
  const started = now();
  const queue = [...bodies];
  const samples = [];
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (queue.length > 0) samples.push(await post(url, queue.shift()));
    }),
  );
  const sorted = samples.map((s) => s.ms).sort((a, b) => a - b);
  return {
    totalMs: Math.round(now() - started),
    p50: Math.round(percentile(sorted, 50)),
    p99: Math.round(percentile(sorted, 99)),
    notOk: samples.filter((s) => s.status !== 'ok').length,
    statuses: Object.fromEntries([...new Set(samples.map((s) => s.status))].map((k) => [k, samples.filter((s) => s.status === k).length])),
  };
}

async function round(name, index) {
  const tag = `${name}${index}`;
  const db = join(work, `${tag}.db`);
  const log = openSync(join(work, `${tag}.log`), 'w');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}/`;
  const profile = args['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${join(work, 'prof', name)}`] : [];
  const relay = spawn(process.execPath, [...profile, join(BUILDS[name], 'cli', 'main.js'), '-v', 'server'], {
    cwd: work,
    stdio: ['ignore', log, log],
    env: {
      PATH: process.env.PATH,
      MOLLY_HOST: '127.0.0.1',
      MOLLY_PORT: String(port),
      MOLLY_DB: db,
      MOLLY_SIGNAL_URL: signalUrl,
      MOLLY_ALLOWED_ENDPOINTS: `["${pushOrigin}"]`,
      MOLLY_ALLOWED_UUIDS: '["*"]',
      MOLLY_VAPID_PRIVKEY: VAPID,
      MOLLY_REGISTRATION_RATE_LIMIT: '0',
    },
  });
  const exited = new Promise((r) => relay.once('exit', r));
  await until(
    () =>
      fetch(url).then(
        () => true,
        () => false,
      ),
    'the relay listening',
    60_000,
    50,
  );
  const devices = Array.from({ length: BATCH }, (_, i) => ({
    uuid: `30000000-0000-4000-8000-${String(index * 10_000 + i).padStart(12, '0')}`,
    device_id: 1,
    password: `bench-password-${i}-xxxxxxxxxx`,
    endpoint: `${pushOrigin}/up/${tag}-${i}`,
    from: `127.0.1.${(i % 250) + 1}`,
  }));
  const fresh = await batch(url, devices, 8);
  // The fastest of `repeat` batches: the least disturbed by the other work on a shared machine.
  const fastest = (batches) => batches.reduce((a, b) => (b.totalMs < a.totalMs ? b : a));
  const again = [];
  const moved = [];
  for (let r = 0; r < REPEAT; r++) {
    again.push(await batch(url, devices));
    moved.push(
      await batch(
        url,
        devices.map((d) => ({ ...d, endpoint: `${d.endpoint}-moved${r}` })),
      ),
    );
  }
  relay.kill('SIGTERM');
  await Promise.race([exited, sleep(10_000)]);
  relay.kill('SIGKILL');
  return { build: name, round: index, load: os.loadavg()[0], newDevices: fresh, reRegistrations: fastest(again), newEndpoints: fastest(moved) };
}

const KINDS = [
  ['newDevices', 'new devices, 8 in flight'],
  ['reRegistrations', 're-registrations (identical), all at once'],
  ['newEndpoints', 'new endpoints, all at once'],
];
const runs = [];
for (let i = 0; i < ROUNDS; i++) {
  for (const name of ['old', 'new']) {
    const r = await round(name, i);
    console.error(`${name} #${i}: ${KINDS.map(([k]) => `${k} ${r[k].totalMs} ms`).join(', ')} (load ${r.load.toFixed(2)})`);
    runs.push(r);
  }
}
servers.close();
agents.forEach((a) => a.destroy());

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const summary = {};
for (const name of ['old', 'new']) {
  const mine = runs.filter((r) => r.build === name);
  summary[name] = {};
  for (const [kind] of KINDS) {
    const totals = mine.map((r) => r[kind].totalMs);
    summary[name][kind] = { medianMs: median(totals), minMs: Math.min(...totals), maxMs: Math.max(...totals) };
  }
}
const root = join(here, '..');
const out = join(here, 'results', 'registrations-side.json');
writeFileSync(
  out,
  `${JSON.stringify({ date: new Date().toISOString(), builds: { old: relative(root, BUILDS.old), new: relative(root, BUILDS.new) }, batch: BATCH, cpus: os.cpus().length, summary, runs }, null, 2)}\n`,
);
console.log(`| ${BATCH} registrations, total time | old: median (range) | new: median (range) | new / old |`);
console.log('|---|---|---|---|');
for (const [kind, label] of KINDS) {
  const o = summary.old[kind];
  const n = summary.new[kind];
  console.log(`| ${label} | ${o.medianMs} ms (${o.minMs}-${o.maxMs}) | ${n.medianMs} ms (${n.minMs}-${n.maxMs}) | ${(n.medianMs / o.medianMs).toFixed(2)} |`);
}
if (runs.some((r) => KINDS.some(([k]) => r[k].notOk > 0))) console.error('some registrations did not answer ok: see .bench-tmp/registrations-side/*.log');
