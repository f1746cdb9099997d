import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { SHUTDOWN_DEADLINE_MS } from '../../src/cli/server.js';
import { CONFIG_KEYS, envName, loadConfig } from '../../src/config.js';
import { packageRoot } from '../../src/paths.js';
import { handOverTimeoutMs } from '../../src/server.js';
import { isPostgresUrl } from '../../src/store/location.js';
import { TEST_VAPID } from '../helpers/index.js';
import { releasedImage } from '../helpers/release.js';

/** deploy/kubernetes: the manifests parsed and checked against the program (kubeconform needs the network). */

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string }; fieldRef?: { fieldPath: string } };
}
interface Probe {
  httpGet?: { path: string; port: string | number };
}
interface Container {
  name: string;
  image: string;
  args?: string[];
  ports: { name: string; containerPort: number }[];
  env: EnvVar[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  volumeMounts?: { name: string; mountPath: string }[];
}
interface PodSpec {
  terminationGracePeriodSeconds?: number;
  containers: Container[];
}
interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  stringData?: Record<string, string>;
  resources?: string[];
}

const dir = (variant: string): string => join(packageRoot, 'deploy', 'kubernetes', variant);
const files = (variant: string): string[] => readdirSync(dir(variant)).filter((f) => f.endsWith('.yaml'));
function manifests(variant: string): Manifest[] {
  return files(variant)
    .filter((f) => f !== 'kustomization.yaml')
    .flatMap((f) =>
      parseAllDocuments(readFileSync(join(dir(variant), f), 'utf8')).map((d) => {
        expect(d.errors, f).toEqual([]);
        return d.toJS() as Manifest;
      }),
    );
}
const one = (ms: Manifest[], kind: string): Manifest => {
  const found = ms.filter((m) => m.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0]!;
};
const podOf = (workload: Manifest): { labels: Record<string, string>; spec: PodSpec } => {
  const template = (workload.spec as { template: { metadata: { labels: Record<string, string> }; spec: PodSpec } }).template;
  return { labels: template.metadata.labels, spec: template.spec };
};
const selects = (selector: Record<string, string>, labels: Record<string, string>): boolean =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

/** The configuration the container would run with: its variables, secrets filled from the Secret (a real key for the placeholder). */
function configOf(ms: Manifest[], env: EnvVar[]): ReturnType<typeof loadConfig> {
  const secrets = new Map(ms.filter((m) => m.kind === 'Secret').map((s) => [s.metadata.name, s.stringData ?? {}]));
  const vars: Record<string, string> = { XDG_CONFIG_HOME: '/nonexistent', HOME: '/nonexistent' };
  for (const e of env) {
    const ref = e.valueFrom?.secretKeyRef;
    if (ref) {
      const value = secrets.get(ref.name)?.[ref.key];
      expect(value, `${e.name}: secret ${ref.name} has key ${ref.key}`).toBeDefined();
      vars[e.name] = e.name === 'MOLLY_VAPID_PRIVKEY' ? TEST_VAPID.priv : (value as string);
    } else if (e.valueFrom?.fieldRef) vars[e.name] = 'pod-0';
    else vars[e.name] = e.value as string;
  }
  return loadConfig({ env: vars });
}

describe.each(['sqlite', 'postgres'])('deploy/kubernetes/%s', (variant) => {
  const ms = manifests(variant);
  const workload = one(ms, 'StatefulSet');
  const pod = podOf(workload);
  const [container] = pod.spec.containers;
  const loaded = configOf(ms, container!.env);

  it('lists every manifest in its kustomization, and runs the released image', () => {
    const kustomization = readFileSync(join(dir(variant), 'kustomization.yaml'), 'utf8');
    const listed = (parseAllDocuments(kustomization)[0]!.toJS() as Manifest).resources ?? [];
    expect([...listed].sort()).toEqual(
      files(variant)
        .filter((f) => f !== 'kustomization.yaml')
        .sort(),
    );
    expect(pod.spec.containers).toHaveLength(1);
    expect(container!.image).toBe(releasedImage());
    expect(container!.args).toEqual(['server']);
  });

  it('sets only MOLLY_* variables that are configuration keys, with values the server accepts', () => {
    const keys = Object.keys(CONFIG_KEYS).map(envName);
    const names = container!.env.map((e) => e.name);
    expect(names.filter((n) => n.startsWith('MOLLY_') && !keys.includes(n))).toEqual([]);
    expect(names.filter((n) => !n.startsWith('MOLLY_') && n !== 'RUST_LOG')).toEqual([]);
    expect(loaded.warnings).toEqual([]);
    expect(loaded.config.host).toBe('0.0.0.0'); // reachable from the Service
  });

  it('serves on the port the Services and probes name; ready and started by /health', () => {
    const [port] = container!.ports;
    expect(container!.ports).toHaveLength(1);
    expect(port!.containerPort).toBe(loaded.config.port);
    const services = ms.filter((m) => m.kind === 'Service');
    expect(services.length).toBeGreaterThan(0);
    for (const s of services) {
      const spec = s.spec as { selector: Record<string, string>; ports: { targetPort: string | number }[] };
      expect(selects(spec.selector, pod.labels), s.metadata.name).toBe(true);
      for (const p of spec.ports) expect([port!.name, port!.containerPort]).toContain(p.targetPort);
    }
    for (const probe of [container!.readinessProbe, container!.startupProbe, container!.livenessProbe]) {
      expect([port!.name, port!.containerPort]).toContain(probe?.httpGet?.port);
    }
    expect(container!.readinessProbe?.httpGet?.path).toBe('/health');
    expect(container!.startupProbe?.httpGet?.path).toBe('/health');
    // /health is 503 while the database is unusable, which a restart does not mend (and, with several instances,
    // would drop every socket): liveness asks only whether the process answers.
    expect(container!.livenessProbe?.httpGet?.path).toBe('/discover');
    expect((workload.spec as { serviceName: string }).serviceName).toBe(
      services.find((s) => (s.spec as { clusterIP?: string }).clusterIP === 'None')?.metadata.name,
    );
  });

  it('gives the shutdown (and, with several instances, the hand-over) time to finish', () => {
    const handOver = isPostgresUrl(loaded.config.db) ? handOverTimeoutMs(loaded.config) : 0;
    expect((pod.spec.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThanOrEqual(SHUTDOWN_DEADLINE_MS + handOver);
  });
});

describe('deploy/kubernetes/sqlite', () => {
  const ms = manifests('sqlite');
  const workload = one(ms, 'StatefulSet');
  const pod = podOf(workload);

  it('runs one instance, its database on a volume claimed for it', () => {
    expect((workload.spec as { replicas: number }).replicas).toBe(1);
    const claims = (workload.spec as { volumeClaimTemplates: { metadata: { name: string } }[] }).volumeClaimTemplates;
    const db = configOf(ms, pod.spec.containers[0]!.env).config.db;
    const mount = pod.spec.containers[0]!.volumeMounts?.find((m) => db.startsWith(`${m.mountPath}/`));
    expect(mount, `a volume mounted above ${db}`).toBeDefined();
    expect(claims.map((c) => c.metadata.name)).toContain(mount!.name);
  });
});

describe('deploy/kubernetes/postgres', () => {
  const ms = manifests('postgres');
  const workload = one(ms, 'StatefulSet');
  const pod = podOf(workload);
  const env = pod.spec.containers[0]!.env;

  it('runs several instances on the PostgreSQL URL of its Secret, each named after its pod', () => {
    expect((workload.spec as { replicas: number }).replicas).toBeGreaterThan(1);
    expect(isPostgresUrl(configOf(ms, env).config.db)).toBe(true);
    expect(env.find((e) => e.name === 'MOLLY_DB')?.valueFrom?.secretKeyRef).toBeDefined(); // the URL holds a password
    expect(env.find((e) => e.name === envName('instance_name'))?.valueFrom?.fieldRef?.fieldPath).toBe('metadata.name');
  });

  it('lets a disruption take one instance at a time', () => {
    const pdb = one(ms, 'PodDisruptionBudget');
    const spec = pdb.spec as { maxUnavailable: number; selector: { matchLabels: Record<string, string> } };
    expect(pdb.apiVersion).toBe('policy/v1');
    expect(spec.maxUnavailable).toBe(1);
    expect(selects(spec.selector.matchLabels, pod.labels)).toBe(true);
  });
});
