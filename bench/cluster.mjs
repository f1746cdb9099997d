// npm run bench:cluster [-- --n 10000] [-- --lease 15] [-- --steady-seconds 60] [-- --skip join,rolling]
// Several instances on one PostgreSQL (a private server, started here) against a fake Signal server, one process per
// instance (bench/cluster-signal.mjs) with the newest-wins rule kept across them (bench/signal-ledger.mjs): cold start
// of 3 instances, steady-state load on PostgreSQL and memory, kill -9 of one, a fourth joining, and a rolling restart
// of all four (`--skip` leaves out the last two). Writes bench/results/cluster-n<N>.json.
import { fork, spawn } from 'node:child_process';
import { mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { PostgresStore } from '../dist/store/postgres.js';
import { startPostgres } from '../test/helpers/private-postgres.mjs';
import { now, pki, rpc, rss, sleep, until } from './lib.mjs';
import { signalLedger } from './signal-ledger.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '10000' },
    lease: { type: 'string', default: '15' },
    'steady-seconds': { type: 'string', default: '60' },
    skip: { type: 'string', default: '' },
  },
});
const skip = new Set(args.skip.split(',').filter(Boolean));
const N = Number(args.n);
const LEASE_S = Number(args.lease);
const STEADY_S = Number(args['steady-seconds']);
const VAPID = 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI';
const TAGS = ['a', 'b', 'c', 'd'];

const work = join(here, '..', '.bench-tmp', 'cluster');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const certs = pki(join(work, 'pki'));
const accounts = Array.from({ length: N }, (_, i) => ({
  uuid: `${String(i).padStart(8, '0')}-0000-4000-8000-000000000000`,
  deviceId: 2,
  password: `bench-password-${i}-xxxxxxxx`,
}));
const accountsFile = join(work, 'accounts.json');
writeFileSync(accountsFile, JSON.stringify(accounts));
const log = (msg) => console.error(`[cluster] ${msg}`);

const children = new Set();
const postgres = await startPostgres();
if (!postgres) throw new Error('PostgreSQL is not installed (apt-get install postgresql)');
process.on('exit', () => {
  children.forEach((c) => c.kill('SIGKILL'));
  postgres.stop();
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130)); // stops the children and PostgreSQL too
const track = (child) => {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
};

async function fake(script, env) {
  const child = track(fork(join(here, script), { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] }));
  const ready = await new Promise((resolve) => child.once('message', resolve));
  return { child, call: rpc(child), ...ready };
}

// The fake Signal server: a process per relay process (each holds that relay's sockets, within a process's descriptor
// limit), their sockets put together by the ledger.
const signals = new Map();
const ledger = signalLedger((tag, id) => signals.get(tag)?.send({ kick: id }));
async function signalFor(tag) {
  const child = track(
    fork(join(here, 'cluster-signal.mjs'), {
      env: { ...process.env, ACCOUNTS_FILE: accountsFile, KEY_FILE: certs.keyFile, CERT_FILE: certs.certFile, TAG: tag },
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    }),
  );
  const { port } = await new Promise((resolve) => child.once('message', resolve));
  child.on('message', (m) => m.ev && ledger.note(m));
  signals.set(tag, child);
  return port;
}
const push = await fake('push-server.mjs', {});
const pushOrigin = `http://127.0.0.1:${push.port}`;

// The database, holding every account as after months of registrations.
const admin = new pg.Client({ connectionString: postgres.url });
await admin.connect();
await admin.query('CREATE DATABASE bench');
await admin.end();
const db = postgres.url.replace(/\/postgres$/, '/bench');
const store = await PostgresStore.open(db);
const t = Math.floor(Date.now() / 1000);
await store.importConnections(
  accounts.map((a) => ({
    ...a,
    endpoint: `${pushOrigin}/up/${a.uuid}`,
    forbidden: false,
    forbiddenReason: null,
    forbiddenAt: null,
    lastRegistration: t,
    createdAt: t,
    updatedAt: t,
    owner: null,
    epoch: 0,
  })),
);
const sql = async (text) => (await store.rows(text))[0];

/** name -> the running process and the tag the Signal server knows it by (a new one for every start). */
const instances = new Map();
let starts = 0;
async function startInstance(name) {
  const tag = `${name}${++starts}`;
  const port = await signalFor(tag);
  const child = track(
    spawn(process.execPath, [join(here, '..', 'dist', 'cli', 'main.js'), 'server'], {
      cwd: work,
      stdio: ['ignore', 'ignore', openSync(join(work, `${name}.log`), 'a')],
      env: {
        PATH: process.env.PATH,
        MOLLY_PORT: '0',
        MOLLY_DB: db,
        MOLLY_SIGNAL_URL: `wss://127.0.0.1:${port}/v1/websocket/`,
        MOLLY_SIGNAL_CA_FILE: certs.caFile,
        MOLLY_ALLOWED_ENDPOINTS: `["${pushOrigin}"]`,
        MOLLY_VAPID_PRIVKEY: VAPID,
        MOLLY_INSTANCE_NAME: name,
        MOLLY_LEASE_SECONDS: String(LEASE_S),
      },
    }),
  );
  instances.set(name, { child, tag });
}

/** Every device has exactly one socket, held by the running instance that owns it in the database; each owns some. */
async function settled(names) {
  const s = ledger.stats(now());
  if (s.open !== N || s.withoutSocket > 0 || s.doubled > 0) return false;
  const owned = await store.rows(
    `SELECT coalesce(i.name, '') AS name, count(*)::int AS n FROM connections c LEFT JOIN instances i ON i.id = c.owner GROUP BY 1`,
  );
  const byName = Object.fromEntries(owned.map((r) => [r.name, r.n]));
  const tags = names.map((name) => instances.get(name).tag);
  return names.every((name, i) => byName[name] > 0 && byName[name] === s.perTag[tags[i]]) && Object.keys(s.perTag).every((tag) => tags.includes(tag));
}
// Generous: on a machine shared with other work, 30,000 handshakes can take many times the ramp's 100 s.
const SETTLE_TIMEOUT_MS = Math.max(10 * 60_000, N * 100);
const waitSettled = (tags, what) => until(() => settled(tags), what, SETTLE_TIMEOUT_MS, 250);

const results = { n: N, leaseSeconds: LEASE_S };

// 1. Cold start of three instances.
let t0 = now();
for (const name of ['a', 'b', 'c']) await startInstance(name);
await waitSettled(['a', 'b', 'c'], 'a cold start');
results.coldStartSeconds = (now() - t0) / 1000;
let stats = ledger.stats(now());
const shares = ['a', 'b', 'c'].map((name) => stats.perTag[instances.get(name).tag]);
results.shares = Object.fromEntries(['a', 'b', 'c'].map((tag, i) => [tag, shares[i]]));
results.largestShareOverMean = Math.max(...shares) / (N / 3);
results.fightsAtStart = stats.fights;
log(`cold start ${results.coldStartSeconds.toFixed(1)} s, shares ${shares.join('/')}`);

// 2. Steady state: statements PostgreSQL runs for the cluster, and memory per instance.
await sleep(10_000);
const commits = async () => Number((await sql(`SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = 'bench'`)).n);
const c0 = await commits();
await sleep(STEADY_S * 1000);
const c1 = await commits();
results.steadyStatementsPerSecond = (c1 - c0 - 1) / STEADY_S; // less the reading itself
results.steadyStatementsPerSecondPerInstance = results.steadyStatementsPerSecond / 3;
results.rssMB = Object.fromEntries(['a', 'b', 'c'].map((name) => [name, rss(instances.get(name).child.pid) / 2 ** 20]));
// Memory per device of each instance: its whole RSS over the devices it holds (the process's base included).
results.rssKBPerDevice = Object.fromEntries(['a', 'b', 'c'].map((name) => [name, (results.rssMB[name] * 1024) / results.shares[name]]));
log(
  `steady ${results.steadyStatementsPerSecond.toFixed(2)} statements/s; RSS ${Object.values(results.rssMB)
    .map((m) => m.toFixed(0))
    .join('/')} MB, ${Object.values(results.rssKBPerDevice)
    .map((k) => k.toFixed(1))
    .join('/')} KB per device`,
);

// 3. kill -9 of one instance: ownership back, and every socket back.
ledger.reset();
const victim = (await sql(`SELECT id FROM instances WHERE name = 'c'`)).id;
t0 = now();
instances.get('c').child.kill('SIGKILL');
await until(
  async () => Number((await sql(`SELECT count(*) AS n FROM connections WHERE owner = '${victim}' OR owner IS NULL`)).n) === 0,
  'ownership back',
  10 * 60_000,
  100,
);
results.failoverOwnershipSeconds = (now() - t0) / 1000;
await waitSettled(['a', 'b'], 'the failover');
results.failoverSocketsSeconds = (now() - t0) / 1000;
stats = ledger.stats(now());
results.failoverWorstGapSeconds = stats.worstGapMs / 1000;
results.failoverFights = stats.fights;
log(`kill -9: ownership back in ${results.failoverOwnershipSeconds.toFixed(1)} s, sockets in ${results.failoverSocketsSeconds.toFixed(1)} s`);

if (!skip.has('join')) {
  // c comes back (its share returns to it), then a fourth joins.
  await startInstance('c');
  await waitSettled(['a', 'b', 'c'], 'c back');
  ledger.reset();
  t0 = now();
  await startInstance('d');
  await waitSettled(['a', 'b', 'c', 'd'], 'd joined');
  results.joinSettledSeconds = (now() - t0) / 1000;
  stats = ledger.stats(now());
  results.joinMoved = stats.kicks;
  results.joinMovedIdeal = N / 4;
  results.joinWorstGapSeconds = stats.worstGapMs / 1000;
  results.joinFights = stats.fights;
  log(`join: ${stats.kicks} moved (ideal ${N / 4}), worst gap ${results.joinWorstGapSeconds.toFixed(2)} s`);
}

if (!skip.has('join') && !skip.has('rolling')) {
  // 4. Rolling restart of all four, one after the other.
  ledger.reset();
  t0 = now();
  results.rollingExitCodes = [];
  results.rollingStopSeconds = [];
  for (const tag of TAGS) {
    const { child } = instances.get(tag);
    const stopped = now();
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    results.rollingExitCodes.push(await exited);
    results.rollingStopSeconds.push((now() - stopped) / 1000);
    await waitSettled(
      TAGS.filter((x) => x !== tag),
      `${tag} handed over`,
    );
    await startInstance(tag);
    await waitSettled(TAGS, `${tag} back`);
  }
  results.rollingSeconds = (now() - t0) / 1000;
  stats = ledger.stats(now());
  results.rollingWorstGapSeconds = stats.worstGapMs / 1000;
  results.rollingFights = stats.fights;
  results.rollingMoves = stats.kicks;
  log(`rolling restart: ${results.rollingSeconds.toFixed(0)} s, worst gap ${results.rollingWorstGapSeconds.toFixed(2)} s, fights ${stats.fights}`);
}

for (const { child } of instances.values()) child.kill('SIGTERM');
await sleep(2_000);
await store.close();

results.machine = {
  cpu: os.cpus()[0]?.model,
  cores: os.cpus().length,
  memoryGB: Math.round(os.totalmem() / 2 ** 30),
  node: process.version,
  date: new Date().toISOString(),
};
results.targets = {
  memory: { kbPerDevice: results.rssKBPerDevice, target: '<= 75 KB per device per instance' },
  failover: { seconds: results.failoverOwnershipSeconds, target: `<= ${2 * LEASE_S} s (two leases)` },
  gaps: { join: results.joinWorstGapSeconds, rolling: results.rollingWorstGapSeconds, target: '<= 2 s per device' },
  steadyLoad: { perInstance: results.steadyStatementsPerSecondPerInstance, target: '<= 1 statement/s per instance' },
  fights: { total: results.fightsAtStart + results.failoverFights + (results.joinFights ?? 0) + (results.rollingFights ?? 0), target: 0 },
};
mkdirSync(join(here, 'results'), { recursive: true });
writeFileSync(join(here, 'results', `cluster-n${N}.json`), `${JSON.stringify(results, null, 2)}\n`);
console.log(JSON.stringify(results, null, 2));
process.exit(0);
