// npm run bench [-- --n 10000] [-- --idle-seconds 60] [-- --only relay] [-- --cpu-prof (profiles into .bench-tmp/prof)]
// Measures the relay and the floor (bench/floor.mjs) against a fake Signal server holding N account devices and a
// fake push server, each in its own process. Writes bench/results/n<N>.json and prints a table and a summary line.
import { fork, spawn } from 'node:child_process';
import { mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { SqliteStore } from '../dist/store/sqlite.js';
import { cpuSeconds, now, percentile, pki, rpc, rss, sleep, until } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '2000' },
    'idle-seconds': { type: 'string', default: '60' },
    rate: { type: 'string', default: '200' },
    blast: { type: 'string', default: '20000' },
    only: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
  },
});
const N = Number(args.n);
const IDLE_S = Number(args['idle-seconds']);
const RATE = Number(args.rate);
const BLAST = Number(args.blast);
const VAPID = 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI';

const work = join(here, '..', '.bench-tmp');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const certs = pki(join(work, 'pki'));
const accounts = Array.from({ length: N }, (_, i) => ({
  uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
  deviceId: 2,
  password: `bench-password-${i}-xxxxxxxx`,
}));
const accountsFile = join(work, 'accounts.json');
const noAccountsFile = join(work, 'none.json');
writeFileSync(accountsFile, JSON.stringify(accounts));
writeFileSync(noAccountsFile, '[]');

/** Every process this run starts, ended with it even when it fails. */
const children = new Set();
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));
const track = (child) => {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
};

async function start(script, env) {
  const child = fork(join(here, script), { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  track(child);
  const ready = await new Promise((resolve) => child.once('message', resolve));
  return { child, call: rpc(child), port: ready.port };
}

const signal = await start('signal-server.mjs', { ACCOUNTS_FILE: accountsFile, KEY_FILE: certs.keyFile, CERT_FILE: certs.certFile });
const push = await start('push-server.mjs', {});
const signalUrl = `wss://127.0.0.1:${signal.port}/v1/websocket/`;
const pushOrigin = `http://127.0.0.1:${push.port}`;

/** A database that already holds every account, as after months of registrations. */
function populatedDb(path) {
  SqliteStore.open(path).close(); // the schema
  const db = new Database(path);
  const insert = db.prepare(
    'INSERT INTO connections (uuid, device_id, password, endpoint, created_at, updated_at, last_registration) VALUES (?, ?, ?, ?, 1, 1, 1)',
  );
  db.transaction(() => {
    for (const a of accounts) insert.run(a.uuid, a.deviceId, a.password, `${pushOrigin}/up/${a.uuid}`);
  })();
  db.close();
}

const subjects = {
  relay: (withAccounts, tag) => {
    const db = join(work, `${tag}.db`);
    if (withAccounts) populatedDb(db);
    const log = openSync(join(work, `${tag}.log`), 'w');
    const profile = args['cpu-prof'] && withAccounts ? ['--cpu-prof', `--cpu-prof-dir=${join(work, 'prof')}`] : [];
    return track(
      spawn(process.execPath, [...profile, join(here, '..', 'dist', 'cli', 'main.js'), 'server'], {
        cwd: work,
        stdio: ['ignore', 'ignore', log],
        env: {
          PATH: process.env.PATH,
          MOLLY_PORT: '0',
          MOLLY_DB: db,
          MOLLY_SIGNAL_URL: signalUrl,
          MOLLY_SIGNAL_CA_FILE: certs.caFile,
          MOLLY_ALLOWED_ENDPOINTS: `["${pushOrigin}"]`,
          MOLLY_VAPID_PRIVKEY: VAPID,
        },
      }),
    );
  },
  floor: (withAccounts) =>
    track(
      spawn(process.execPath, [join(here, 'floor.mjs')], {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: {
          PATH: process.env.PATH,
          ACCOUNTS_FILE: withAccounts ? accountsFile : noAccountsFile,
          CA_FILE: certs.caFile,
          SIGNAL_URL: signalUrl,
          PUSH_ORIGIN: pushOrigin,
        },
      }),
    ),
};

async function stop(child) {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await Promise.race([exited, sleep(8000)]);
  child.kill('SIGKILL');
}

async function measure(name) {
  const log = (msg) => console.error(`[${name}] ${msg}`);
  // Idle: the process with nothing to do.
  const idle = subjects[name](false, `${name}-idle`);
  await sleep(3000);
  const idleRss = rss(idle.pid);
  await stop(idle);

  // Cold start on a store that already holds N connections.
  const started = now();
  const proc = subjects[name](true, name);
  await until(async () => (await signal.call('stats')).open === N, `${N} connections`, 10 * 60_000, 100);
  const connectSeconds = (now() - started) / 1000;
  log(`${N} connected in ${connectSeconds.toFixed(1)} s`);
  await sleep(5000);
  const loadedRss = rss(proc.pid);

  // Idle CPU: keepalives only.
  const cpu0 = cpuSeconds(proc.pid);
  await sleep(IDLE_S * 1000);
  const idleCpuPercent = ((cpuSeconds(proc.pid) - cpu0) / IDLE_S) * 100;
  log(`idle CPU ${idleCpuPercent.toFixed(2)} % of a core`);

  // Envelope-to-push latency at a steady rate, one envelope per account (so no coalescing is involved).
  await push.call('take');
  const sent = await signal.call('steady', { rate: RATE, count: N });
  await until(async () => (await push.call('count')) >= sent.length, 'the pushes', 60_000, 100).catch(() => log('some pushes never arrived'));
  const arrivals = new Map();
  for (const [path, at] of await push.call('take')) arrivals.set(path.slice('/up/'.length), at);
  const latencies = sent
    .map((s) => arrivals.get(s.uuid) - s.at)
    .filter((v) => Number.isFinite(v) && v >= 0)
    .sort((a, b) => a - b);
  log(`latency p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms over ${latencies.length}`);

  // Saturation: envelopes as fast as the sockets take them.
  const { seconds } = await signal.call('blast', { count: BLAST });
  const envelopesPerSecond = BLAST / seconds;
  log(`${Math.round(envelopesPerSecond)} envelopes/s at saturation`);
  await stop(proc);
  await until(async () => (await signal.call('stats')).open === 0, 'the sockets to close', 30_000, 100);

  return {
    idleRssMB: idleRss / 2 ** 20,
    loadedRssMB: loadedRss / 2 ** 20,
    kbPerConnection: (loadedRss - idleRss) / N / 1024,
    connectSeconds,
    idleCpuPercent,
    latencyMs: { p50: percentile(latencies, 50), p99: percentile(latencies, 99), count: latencies.length, of: sent.length },
    envelopesPerSecond,
  };
}

const results = {};
for (const name of args.only ? [args.only] : ['relay', 'floor']) results[name] = await measure(name);
signal.child.kill();
push.child.kill();

const machine = {
  cpu: os.cpus()[0]?.model,
  cores: os.cpus().length,
  memoryGB: Math.round(os.totalmem() / 2 ** 30),
  kernel: os.release(),
  node: process.version,
  date: new Date().toISOString(),
};
const r = results.relay;
const f = results.floor;
const targets = r &&
  f && {
    memory: { ratio: r.kbPerConnection / f.kbPerConnection, target: '<= 1.25x floor' },
    p99: { ratio: r.latencyMs.p99 / f.latencyMs.p99, target: '<= 1.5x floor' },
    connect: { seconds: r.connectSeconds, target: N === 2000 ? '<= 30 s at N=2000' : 'n/a' },
    idleCpu: { percent: r.idleCpuPercent, target: N === 2000 ? '<= 2 % of a core at N=2000' : 'n/a' },
    rss: { mb: r.loadedRssMB, target: N >= 10000 ? '< 1536 MB at N=10000' : 'n/a' },
  };
mkdirSync(join(here, 'results'), { recursive: true });
writeFileSync(
  join(here, 'results', `n${N}.json`),
  `${JSON.stringify({ n: N, machine, settings: { idleSeconds: IDLE_S, rate: RATE, blast: BLAST }, results, targets }, null, 2)}\n`,
);

const row = (label, fn) => `| ${label} | ${Object.values(results).map(fn).join(' | ')} |`;
console.log(`\nN = ${N} on ${machine.cores} x ${machine.cpu}, ${machine.memoryGB} GB, Node ${machine.node}\n`);
console.log(
  `| | ${Object.keys(results).join(' | ')} |\n|---|${Object.keys(results)
    .map(() => '---|')
    .join('')}`,
);
console.log(row('RSS idle (MB)', (x) => x.idleRssMB.toFixed(1)));
console.log(row(`RSS with ${N} connections (MB)`, (x) => x.loadedRssMB.toFixed(1)));
console.log(row('memory per connection (KB)', (x) => x.kbPerConnection.toFixed(1)));
console.log(row(`connect all ${N} from a cold start (s)`, (x) => x.connectSeconds.toFixed(1)));
console.log(row('idle CPU, keepalives only (% of a core)', (x) => x.idleCpuPercent.toFixed(2)));
console.log(row(`envelope-to-push p50 / p99 at ${RATE}/s (ms)`, (x) => `${x.latencyMs.p50.toFixed(2)} / ${x.latencyMs.p99.toFixed(2)}`));
console.log(row('envelopes per second at saturation', (x) => Math.round(x.envelopesPerSecond)));
if (targets) {
  console.log(
    `\nsummary: N=${N} memory/conn ${r.kbPerConnection.toFixed(1)} KB (${targets.memory.ratio.toFixed(2)}x floor), ` +
      `p99 ${r.latencyMs.p99.toFixed(2)} ms (${targets.p99.ratio.toFixed(2)}x floor), connect ${r.connectSeconds.toFixed(1)} s, ` +
      `idle CPU ${r.idleCpuPercent.toFixed(2)} %, RSS ${r.loadedRssMB.toFixed(0)} MB, ${Math.round(r.envelopesPerSecond)} env/s`,
  );
}
