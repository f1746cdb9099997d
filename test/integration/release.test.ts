import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { validateWorkflow } from '@action-validator/core';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { packageRoot, version } from '../../src/paths.js';
import { BinProcess, runBin } from '../helpers/bin.js';
import { tempDir } from '../helpers/index.js';
import { releasedImage } from '../helpers/release.js';

/** One version everywhere, the release workflow, and the deployment files naming the released image. */

const read = (...p: string[]): string => readFileSync(join(packageRoot, ...p), 'utf8');
const workflowsDir = join(packageRoot, '.github', 'workflows');

interface Step {
  uses?: string;
  run?: string;
  with?: Record<string, string | boolean | number>;
}
interface Workflow {
  on: { push: { tags: string[] } };
  jobs: Record<string, { needs?: string | string[]; steps: Step[]; permissions?: Record<string, string> }>;
}
const release = (): Workflow => parseYaml(read('.github', 'workflows', 'release.yml')) as Workflow;
const step = (wf: Workflow, job: string, uses: string): Step => {
  const found = wf.jobs[job]?.steps.find((s) => s.uses?.startsWith(`${uses}@`));
  expect(found, `${job}: ${uses}`).toBeDefined();
  return found!;
};

/** A tag filter of GitHub Actions (`[0-9]+.[0-9]+.[0-9]+`) as a regular expression: `+` repeats, `.` is itself. */
const tagFilter = (pattern: string): RegExp => new RegExp(`^${pattern.replace(/\./g, '\\.').replace(/\*/g, '[^/]*')}$`);

/**
 * The image tags docker/metadata-action makes for a release `tag`, from the tag rules the workflow gives it: semver
 * patterns and raw values, each possibly off for a major version zero.
 */
const OFF_FOR_ZERO = "${{ !startsWith(github.ref_name, '0.') }}";
function imageTags(rules: string, tag: string): string[] {
  const [major, minor] = tag.split('.');
  return rules
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .flatMap((rule) => {
      const [, fields, enable] = /^(.*?)(?:,enable=(.*))?$/.exec(rule)!;
      if (enable !== undefined && enable !== OFF_FOR_ZERO) throw new Error(`an enable= this test does not read: ${rule}`);
      if (enable !== undefined && tag.startsWith('0.')) return [];
      const attrs = Object.fromEntries(fields!.split(',').map((a) => a.split('=') as [string, string]));
      if (attrs.type === 'raw') return [attrs.value as string];
      if (attrs.type !== 'semver') throw new Error(`a tag rule this test does not read: ${rule}`);
      return [(attrs.pattern as string).replace('{{version}}', tag).replace('{{major}}', major!).replace('{{minor}}', minor!)];
    });
}

describe('the GitHub workflows', () => {
  it("are valid workflows (the validator checks them against GitHub's schema, offline)", () => {
    const files = readdirSync(workflowsDir).filter((f) => /\.ya?ml$/.test(f));
    expect(files).toContain('release.yml');
    for (const f of files) expect(validateWorkflow(read('.github', 'workflows', f)).errors, f).toEqual([]);
    // The check itself catches a broken workflow.
    expect(validateWorkflow('on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz: []\n').errors).not.toEqual([]);
  });

  it("release on a version tag, after checking that it is package.json's version", () => {
    const wf = release();
    const [filter] = wf.on.push.tags;
    for (const tag of ['1.7.1', '0.2.0', '10.20.30']) expect(tag).toMatch(tagFilter(filter!));
    for (const tag of ['v1.7.1', '1.7', 'latest']) expect(tag).not.toMatch(tagFilter(filter!));
    const checks = wf.jobs.check!.steps.map((s) => s.run ?? '').join('\n');
    expect(checks).toContain('require("./package.json").version');
    expect(checks).toContain('$GITHUB_REF_NAME');
    expect(checks).toContain('CHANGELOG.md');
    expect(wf.jobs.image!.needs).toBe('check');
    expect(wf.jobs.npm!.needs).toBe('check');
  });

  it("push the image for amd64 and arm64 with MollySocket's tag scheme", () => {
    const wf = release();
    const build = step(wf, 'image', 'docker/build-push-action');
    expect(String(build.with!.platforms).split(',')).toEqual(['linux/amd64', 'linux/arm64']);
    expect(build.with!.push).toBe(true);
    step(wf, 'image', 'docker/setup-qemu-action');
    step(wf, 'image', 'docker/setup-buildx-action');
    const meta = step(wf, 'image', 'docker/metadata-action');
    expect(meta.with!.images).toBe('ghcr.io/${{ github.repository }}');
    const rules = String(meta.with!.tags);
    expect(imageTags(rules, '1.7.1')).toEqual(['1.7.1', '1.7', '1', 'latest']);
    expect(imageTags(rules, '0.2.0')).toEqual(['0.2.0', '0.2', 'latest']); // no "0": major version zero
    expect(wf.jobs.image!.permissions).toMatchObject({ packages: 'write' });
  });

  it('publish the npm package', () => {
    const wf = release();
    expect(wf.jobs.npm!.steps.some((s) => /^npm publish\b/.test(s.run ?? ''))).toBe(true);
    expect(step(wf, 'npm', 'actions/setup-node').with!['registry-url']).toBe('https://registry.npmjs.org');
  });
});

describe('the version', () => {
  it("is package.json's, the first entry of CHANGELOG.md, whose versions go down", () => {
    expect(version).toBe((JSON.parse(read('package.json')) as { version: string }).version);
    const entries = [...read('CHANGELOG.md').matchAll(/^## (\d+)\.(\d+)\.(\d+)\b/gm)].map((m) => [Number(m[1]), Number(m[2]), Number(m[3])]);
    expect(entries[0]?.join('.')).toBe(version);
    for (let i = 1; i < entries.length; i++) {
      const [a, b] = [entries[i - 1]!, entries[i]!];
      expect(a[0]! * 1e6 + a[1]! * 1e3 + a[2]!, `${a.join('.')} after ${b.join('.')}`).toBeGreaterThan(b[0]! * 1e6 + b[1]! * 1e3 + b[2]!);
    }
  });

  it('is printed by --version as MollySocket prints its own', async () => {
    for (const flag of ['--version', '-V']) {
      expect(await runBin([flag], { cwd: tempDir() })).toMatchObject({ code: 0, stdout: `mollysocket ${version}\n` });
    }
  });

  it('is on /health, in the start line of the log and in the metrics', async () => {
    const server = new BinProcess(['server'], { cwd: tempDir(), env: { MOLLY_PORT: '0' } });
    try {
      const url = await server.url();
      expect(server.stderr).toMatch(new RegExp(`INFO: web server listening .*"version":"${version.replace(/\./g, '\\.')}"`));
      expect(((await (await fetch(`${url}/health`)).json()) as { version: string }).version).toBe(version);
      expect(await (await fetch(`${url}/metrics`)).text()).toContain(`\nmollysocket_build_info{version="${version}"} 1\n`);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });
});

describe('the compose files', () => {
  it('name the released image, and keep building this checkout', () => {
    const compose = parseYaml(read('docker-compose.yml')) as { services: { mollysocket: { image: string; build: string } } };
    expect(compose.services.mollysocket).toMatchObject({ image: releasedImage(), build: '.' });
    const cluster = parseYaml(read('deploy', 'compose', 'cluster.yml'), { merge: true }) as { services: Record<string, { image: string; build?: string }> };
    const relays = Object.values(cluster.services).filter((s) => s.build !== undefined);
    expect(relays.length).toBeGreaterThan(1);
    for (const r of relays) expect(r).toMatchObject({ image: releasedImage(), build: '../..' });
  });
});
