// npm run bench:registrations [-- --rows 10000,200000] [-- --count 2000] [-- --dist <a build's dist directory>]
// Registration latency on a store that already holds many rows: for each size, a SQLite database holding that many
// connections (what a registration flood leaves: forbidden, refused by Signal), the relay started on it, then
// Molly's routine re-registration (identical: row 6), new devices (asked to Signal, stored, test push), and POSTs
// for a uuid that allowed_uuids refuses, each measured one at a time, then the routine re-registrations with 16 in
// flight. Writes bench/results/registrations.json and prints a table.
import { spawn } from 'node:child_process';
import { mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { acceptingServers, freePort, now, percentile, sleep, until } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    rows: { type: 'string', default: '10000,200000' },
    count: { type: 'string', default: '2000' },
    dist: { type: 'string', default: join(here, '..', 'dist') },
  },
});
const SIZES = args.rows.split(',').map(Number);
const COUNT = Number(args.count);
const DIST = resolve(args.dist);
const { SqliteStore } = await import(pathToFileURL(join(DIST, 'store', 'sqlite.js')).href);
const VAPID = 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI';
const ALLOWED = '10000000-0000-4000-8000-';
const ROUTINE = '20000000-0000-4000-8000-000000000001';
const FRESH = Array.from({ length: Math.min(Number(args.count), 500) }, (_, i) => `30000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
const REFUSED = '40000000-0000-4000-8000-000000000001';

const work = join(here, '..', '.bench-tmp', 'registrations');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

const servers = await acceptingServers();
const { signalUrl, pushOrigin } = servers;

/** `rows` connections refused by Signal a day ago, as a registration flood leaves them. */
function floodedDb(path, rows) {
  SqliteStore.open(path).close(); // the schema
  const db = new Database(path);
  const day = Math.floor(Date.now() / 1000) - 86_400;
  const insert = db.prepare(
    `INSERT INTO connections (uuid, device_id, password, endpoint, forbidden, forbidden_reason, forbidden_at, created_at, updated_at, last_registration)
     VALUES (?, 1, 'made-up-password-xxxxxxx', ?, 1, 'signal_403', ?, ?, ?, ?)`,
  );
  db.transaction(() => {
    for (let i = 0; i < rows; i++) insert.run(`${ALLOWED}${String(i).padStart(12, '0')}`, `${pushOrigin}/up/${i}`, day, day, day, day);
  })();
  db.close();
}

async function post(url, body) {
  const started = now();
  const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const { mollysocket } = await res.json();
  return { ms: now() - started, status: mollysocket.status };
}

const stats = (samples) => {
  const sorted = samples.map((s) => s.ms).sort((a, b) => a - b);
  return { p50: +percentile(sorted, 50).toFixed(2), p99: +percentile(sorted, 99).toFixed(2) };
};

async function measure(rows) {
  const db = join(work, `r${rows}.db`);
  floodedDb(db, rows);
  const log = openSync(join(work, `r${rows}.log`), 'w');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}/`;
  const started = now();
  const relay = spawn(process.execPath, [join(DIST, 'cli', 'main.js'), 'server'], {
    cwd: work,
    stdio: ['ignore', log, log],
    env: {
      PATH: process.env.PATH,
      MOLLY_HOST: '127.0.0.1',
      MOLLY_PORT: String(port),
      MOLLY_DB: db,
      MOLLY_SIGNAL_URL: signalUrl,
      MOLLY_ALLOWED_ENDPOINTS: `["${pushOrigin}"]`,
      MOLLY_ALLOWED_UUIDS: JSON.stringify([ROUTINE, ...FRESH]), // not REFUSED
      MOLLY_VAPID_PRIVKEY: VAPID,
      MOLLY_REGISTRATION_RATE_LIMIT: '0',
    },
  });
  const exited = new Promise((r) => relay.once('exit', r));
  await until(
    () =>
      fetch(`${url}discover`).then(
        (r) => r.ok,
        () => false,
      ),
    'the relay listening',
    10 * 60_000,
    50,
  );
  const startSeconds = (now() - started) / 1000;
  console.error(`[${rows}] listening after ${startSeconds.toFixed(1)} s`);

  const molly = { uuid: ROUTINE, device_id: 1, password: 'routine-password-xxxxxxx', endpoint: `${pushOrigin}/up/routine` };
  if ((await post(url, molly)).status !== 'ok') throw new Error('the first registration failed');
  const routine = [];
  for (let i = 0; i < COUNT; i++) routine.push(await post(url, molly));
  const fresh = [];
  for (const [i, uuid] of FRESH.entries()) fresh.push(await post(url, { ...molly, uuid, endpoint: `${pushOrigin}/up/new${i}` }));
  const refused = [];
  for (let i = 0; i < COUNT; i++) refused.push(await post(url, { ...molly, uuid: REFUSED }));
  const concurrent = [];
  const concurrentStart = now();
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let i = 0; i < COUNT / 16; i++) concurrent.push(await post(url, molly));
    }),
  );
  const concurrentPerSecond = concurrent.length / ((now() - concurrentStart) / 1000);
  const bad = [...routine, ...fresh, ...concurrent].filter((s) => s.status !== 'ok').length;
  relay.kill('SIGTERM');
  await Promise.race([exited, sleep(10_000)]);
  relay.kill('SIGKILL');
  return {
    rows,
    startSeconds: +startSeconds.toFixed(2),
    routine: stats(routine),
    newDevice: stats(fresh),
    refusedUuid: stats(refused),
    routine16InFlight: { ...stats(concurrent), perSecond: Math.round(concurrentPerSecond) },
    notOk: bad,
  };
}

const results = [];
for (const rows of SIZES) results.push(await measure(rows));
servers.close();
const out = join(here, 'results', 'registrations.json');
writeFileSync(out, `${JSON.stringify({ date: new Date().toISOString(), dist: relative(join(here, '..'), DIST), count: COUNT, results }, null, 2)}\n`);
console.log(
  '| stored rows | start (s) | routine p50 / p99 (ms) | new device p50 / p99 (ms) | refused uuid p50 / p99 (ms) | routine, 16 in flight: p50 / p99 (ms), per s |',
);
console.log('|---|---|---|---|---|---|');
for (const r of results) {
  console.log(
    `| ${r.rows} | ${r.startSeconds} | ${r.routine.p50} / ${r.routine.p99} | ${r.newDevice.p50} / ${r.newDevice.p99} | ` +
      `${r.refusedUuid.p50} / ${r.refusedUuid.p99} | ${r.routine16InFlight.p50} / ${r.routine16InFlight.p99}, ${r.routine16InFlight.perSecond} |`,
  );
}
if (results.some((r) => r.notOk > 0)) console.error('some registrations did not answer ok: see .bench-tmp/registrations/*.log');
