import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadConfig } from '../../src/config.js';
import { packageRoot, version } from '../../src/paths.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer } from '../fakes/signal-server.js';
import { testPki } from '../fakes/tls.js';
import { BinProcess } from '../helpers/bin.js';
import { eventually, memoryLogger, tempDir, TEST_UUIDS } from '../helpers/index.js';
import { freshDatabase, postgresMissing } from '../helpers/postgres.js';

/** deploy/prometheus (scrape example, alert rules and their unit tests) and deploy/grafana (the dashboard). */

const PROMTOOL = '/usr/bin/promtool';
const havePromtool = existsSync(PROMTOOL);
if (!havePromtool && process.env.CI) throw new Error('the alert rule checks need promtool: apt-get install prometheus');
if (!havePromtool) process.stderr.write('skipping the promtool checks: promtool is not installed (apt-get install prometheus)\n');

const prometheusDir = join(packageRoot, 'deploy', 'prometheus');
const grafanaDir = join(packageRoot, 'deploy', 'grafana');
const promtool = (...args: string[]): string => execFileSync(PROMTOOL, args, { cwd: prometheusDir, encoding: 'utf8' });

interface Rule {
  alert: string;
  expr: string;
}
const rules = (): Rule[] =>
  (parseYaml(readFileSync(join(prometheusDir, 'alerts.yml'), 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);

interface Panel {
  type: string;
  title: string;
  targets?: { expr: string }[];
  panels?: Panel[];
}
const dashboards = (): { file: string; panels: Panel[]; templating: { list: { query?: string | { query: string } }[] } }[] =>
  readdirSync(grafanaDir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => ({ file: f, ...(JSON.parse(readFileSync(join(grafanaDir, f), 'utf8')) as { panels: Panel[]; templating: { list: [] } }) }));

/** Every PromQL expression the dashboards run: panel queries and template variables' label_values(...). */
const dashboardQueries = (): string[] =>
  dashboards().flatMap((d) => [
    ...d.panels.flatMap((p) => [p, ...(p.panels ?? [])]).flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
    ...d.templating.list
      .map((v) => (typeof v.query === 'object' ? v.query.query : v.query))
      .filter((q): q is string => q?.startsWith('label_values(') ?? false),
  ]);

const NOT_METRICS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool', 'and', 'or', 'unless', 'inf', 'nan']);

/** The metric names a PromQL expression (or Grafana's label_values) selects: every bare name that is no function or keyword. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // label values
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\[[^\]]*\]/g, '') // ranges
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '') // label lists
    .replace(/\$\w+/g, ''); // Grafana variables
  // label_values(metric, label): the label is no metric.
  const withoutLabelArg = bare.replace(/\blabel_values\(([^,()]*),[^)]*\)/g, '($1)');
  const names = [...withoutLabelArg.matchAll(/\b[a-zA-Z_][a-zA-Z0-9_]*\b(?!\s*\()/g)].map((m) => m[0]).filter((n) => !NOT_METRICS.has(n.toLowerCase()));
  return [...new Set(names)];
}

/** The series names a /metrics page exposes, histograms' _bucket, _sum and _count included. */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(name as string);
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(`${name}${s}`);
    if (type === 'summary') for (const s of ['_sum', '_count']) names.add(`${name}${s}`);
  }
  return names;
}

/** What Prometheus itself records for every target. */
const PROMETHEUS_OWN = new Set(['up']);
/** Metrics only a server on PostgreSQL (several instances) has: the check on SQLite leaves them out. */
const LEASE_GAUGE = 'mollysocket_lease_remaining_seconds';
const POSTGRES_ONLY = new Set([LEASE_GAUGE]);

function usedNames(): Set<string> {
  return new Set([...rules().map((r) => r.expr), ...dashboardQueries()].flatMap(metricNames).filter((n) => !PROMETHEUS_OWN.has(n)));
}

/** The metric names a server's /metrics shows, once its log says `ready` (the web server listens before the lease starts). */
async function metricsOfBin(env: Record<string, string>, ready = /web server listening/): Promise<Set<string>> {
  const server = new BinProcess(['server'], { cwd: tempDir(), env: { MOLLY_PORT: '0', ...env } });
  try {
    const url = await server.url();
    await server.waitFor(ready);
    const text = await (await fetch(`${url}/metrics`)).text();
    return exposedNames(text);
  } finally {
    expect(await server.stop()).toBe(0);
  }
}

describe.skipIf(!havePromtool)('the Prometheus example', () => {
  it('passes `promtool check rules` and `promtool check config`', () => {
    expect(promtool('check', 'rules', 'alerts.yml')).toMatch(/SUCCESS: \d+ rules found/);
    expect(promtool('check', 'config', 'prometheus.yml')).toContain('is valid prometheus config file syntax');
  });

  it("passes its alert rules' unit tests (`promtool test rules`), which make every alert fire", () => {
    expect(promtool('test', 'rules', 'alerts.test.yml')).toContain('SUCCESS');
    const tests = parseYaml(readFileSync(join(prometheusDir, 'alerts.test.yml'), 'utf8')) as {
      tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
    };
    const fired = new Set(
      tests.tests
        .flatMap((t) => t.alert_rule_test)
        .filter((a) => a.exp_alerts.length > 0)
        .map((a) => a.alertname),
    );
    expect(
      rules()
        .map((r) => r.alert)
        .filter((a) => !fired.has(a)),
    ).toEqual([]);
  });

  it('has the alerts an operator expects', () => {
    expect(rules().map((r) => r.alert)).toEqual([
      'MollySocketDown',
      'MollySocketManyForbidden',
      'MollySocketPushesFailing',
      'MollySocketConnectionsBelowStored',
      'MollySocketLeaseLapsed',
      'MollySocketDevicesLost',
      'MollySocketEventLoopLag',
    ]);
  });
});

describe('the names the alert rules and the Grafana dashboard use', () => {
  it('are read from PromQL: selectors, not functions, keywords, labels or variables', () => {
    expect(metricNames('sum by (job, le) (rate(a_total{outcome=~"failed|by"}[5m] offset 1h)) / on (job) group_left (x) b > 0.5 and up{job="$job"}')).toEqual([
      'a_total',
      'b',
      'up',
    ]);
    expect(metricNames('histogram_quantile(0.95, sum by (le) (rate(h_bucket{instance=~"$instance"}[$__rate_interval])))')).toEqual(['h_bucket']);
    expect(metricNames('label_values(mollysocket_connections{job="$job"}, instance)')).toEqual(['mollysocket_connections']);
  });

  it('include the metrics each alert is about, and every dashboard panel has a query', () => {
    const used = usedNames();
    for (const name of [
      'mollysocket_forbiddens',
      'mollysocket_push_results_total',
      'mollysocket_connections',
      'mollysocket_connection_states',
      LEASE_GAUGE,
      'nodejs_eventloop_lag_p99_seconds',
    ]) {
      expect(used, name).toContain(name);
    }
    for (const d of dashboards()) {
      const panels = d.panels.filter((p) => p.type !== 'row');
      expect(panels.length, d.file).toBeGreaterThan(10);
      expect(panels.filter((p) => (p.targets ?? []).length === 0).map((p) => p.title)).toEqual([]);
      const ids = d.panels.map((p) => (p as { id?: number }).id);
      expect(new Set(ids).size, `${d.file}: panel ids unique`).toBe(ids.length);
      // Every query goes to the data source picked on import (the dashboard's own variable), none to a fixed one.
      const sources = [...JSON.stringify(d).matchAll(/"datasource":\{[^}]*"uid":"([^"]*)"/g)].map((m) => m[1]);
      expect(sources.length).toBeGreaterThan(panels.length);
      expect(new Set(sources)).toEqual(new Set(['${datasource}']));
    }
  });

  it('are all on the /metrics page of a server on SQLite (the PostgreSQL-only lease gauge aside)', async () => {
    const exposed = await metricsOfBin({});
    expect([...usedNames()].filter((n) => !exposed.has(n) && !POSTGRES_ONLY.has(n))).toEqual([]);
  });

  it.skipIf(postgresMissing !== undefined)('are all on the /metrics page of a server on PostgreSQL', async () => {
    const exposed = await metricsOfBin({ MOLLY_DB: await freshDatabase(), MOLLY_INSTANCE_NAME: 'metrics-check' }, /joined the cluster/);
    const missing = [...usedNames()].filter((n) => !exposed.has(n));
    expect(missing).toEqual([]);
  });
});

const backends: [string, () => Promise<Record<string, string>>][] = [
  ['SQLite', async () => ({ MOLLY_DB: join(tempDir(), 'mollysocket.db') })],
  ...(postgresMissing === undefined
    ? [
        ['PostgreSQL', async () => ({ MOLLY_DB: await freshDatabase(), MOLLY_LEASE_SECONDS: '3', MOLLY_INSTANCE_NAME: 'gauges' })] as [
          string,
          () => Promise<Record<string, string>>,
        ],
      ]
    : []),
];

describe.each(backends)('the gauges the "connections below what is stored" alert compares, on %s', (_backend, database) => {
  let signal: FakeSignalServer;
  let push: FakePushServer;
  let server: RunningServer;
  const [healthy, refused] = TEST_UUIDS;

  beforeAll(async () => {
    signal = await FakeSignalServer.start({ tls: true });
    push = await FakePushServer.start();
    signal.addAccount({ uuid: healthy, deviceId: 1, password: 'right' });
    signal.addAccount({ uuid: refused, deviceId: 1, password: 'whatever' }); // accepted at registration, unlinked later
    const { config } = loadConfig({
      env: {
        MOLLY_PORT: '0',
        MOLLY_SIGNAL_URL: signal.url,
        MOLLY_SIGNAL_CA_FILE: testPki().caFile,
        MOLLY_ALLOWED_ENDPOINTS: JSON.stringify([push.origin]),
        ...(await database()),
      },
    });
    server = await startServer(config, memoryLogger().log, { tune: (o) => ({ ...o, backoff: { baseMs: 20, capMs: 100 } }) });
  });

  afterAll(async () => {
    await server.close();
    await signal.close();
    await push.close();
  });

  const register = (uuid: string, password: string) =>
    fetch(`${server.url}/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ uuid, device_id: 1, password, endpoint: push.endpoint(uuid) }),
    });
  const sample = async (series: string): Promise<number | undefined> => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? undefined : Number(line.slice(series.length + 1));
  };
  const until = (series: string, value: number, what: string): Promise<void> => eventually(async () => (await sample(series)) === value, what, 15_000, 50);

  it('count the stored connections that are not forbidden (on PostgreSQL: those this instance runs), and those connected', async () => {
    expect((await register(healthy, 'right')).status).toBe(200);
    expect((await register(refused, 'whatever')).status).toBe(200);
    await signal.until(() => signal.open(refused, 1).length === 1, 'the second one connected');
    // The device is unlinked: Signal drops its socket and refuses its next login (403).
    signal.removeAccount({ uuid: refused, deviceId: 1 });
    signal.open(refused, 1)[0]!.ws.close(1011);
    await until('mollysocket_connection_states{state="forbidden"}', 1, 'the refused one forbidden');
    await until('mollysocket_connection_states{state="connected"}', 1, 'the other connected');
    expect(await sample('mollysocket_connections')).toBe(1);
    expect(await sample('mollysocket_forbiddens')).toBe(1);

    // Signal gone: the connection is still one to hold, and no longer connected (what the alert reports after 15 minutes).
    await signal.close();
    await until('mollysocket_connection_states{state="connected"}', 0, 'the socket down');
    expect(await sample('mollysocket_connections')).toBe(1);
    // One scrape: between two, the connection may move from connecting to backoff.
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const value = (series: string): number =>
      Number(
        text
          .split('\n')
          .find((l) => l.startsWith(`${series} `))!
          .slice(series.length + 1),
      );
    expect(value('mollysocket_connection_states{state="backoff"}') + value('mollysocket_connection_states{state="connecting"}')).toBe(1);
  });

  it('come with the process metrics (event-loop lag) and the version', async () => {
    expect(await sample('nodejs_eventloop_lag_p99_seconds')).toBeGreaterThanOrEqual(0);
    expect(await sample('process_start_time_seconds')).toBeGreaterThan(0);
    expect(await sample(`mollysocket_build_info{version="${version}"}`)).toBe(1);
  });
});
