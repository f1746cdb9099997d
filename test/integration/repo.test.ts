import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { runBin } from '../helpers/bin.js';
import { tempDir } from '../helpers/index.js';

/** The repository stands alone: no reference outside it, its docs shipped, its license and commands written down. */

const git = (...args: string[]): string => execFileSync('git', args, { cwd: packageRoot, encoding: 'utf8' });
const tracked = git('ls-files', '-z')
  .split('\0')
  .filter((f) => f !== '');
const read = (file: string): string => readFileSync(join(packageRoot, file), 'utf8');

/** Relative link targets in a markdown file, without their #fragment. */
const linksIn = (markdown: string): string[] =>
  [...markdown.matchAll(/\]\(([^)\s]+)\)/g)]
    .map((m) => m[1] as string)
    .filter((l) => !/^[a-z]+:|^#/.test(l))
    .map((l) => l.replace(/#.*$/, ''));

describe('the repository', () => {
  it('has no tracked file that refers to a path outside it', () => {
    // Built from pieces, so that this file does not find itself.
    const outside = ['..' + '/shared', '/work' + '/', 'PROTOCOL' + '.md'];
    const hits = tracked.filter((f) => !f.endsWith('package-lock.json')).filter((f) => outside.some((o) => read(f).includes(o)));
    expect(hits).toEqual([]);
  });

  it('has every relative link of its markdown files pointing at a tracked file inside it', () => {
    const broken: string[] = [];
    for (const doc of tracked.filter((f) => f.endsWith('.md'))) {
      for (const link of linksIn(read(doc))) {
        const target = normalize(join(dirname(doc), link)).replace(/\/$/, '');
        const inside = !target.startsWith('..');
        if (!inside || !tracked.some((f) => f === target || f.startsWith(`${target}/`))) broken.push(`${doc}: ${link}`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('ships in its npm package every file its README and INSTALL.md link to, the systemd units and the license', () => {
    const [pack] = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: packageRoot, encoding: 'utf8' })) as {
      files: { path: string }[];
    }[];
    const packed = pack!.files.map((f) => f.path);
    const wanted = [...linksIn(read('README.md')), ...linksIn(read('INSTALL.md')), 'LICENSE', 'mollysocket.service', 'mollysocket-vapid.service'];
    for (const link of wanted) {
      const target = normalize(link).replace(/\/$/, '');
      expect(
        packed.some((f) => f === target || f.startsWith(`${target}/`)),
        link,
      ).toBe(true);
    }
    expect(read('.gitignore').split('\n')).toContain('*.tgz');
  });

  it('carries the AGPL-3.0 text in LICENSE, as package.json says', () => {
    const license = read('LICENSE');
    expect(license).toMatch(/^\s+GNU AFFERO GENERAL PUBLIC LICENSE\n\s+Version 3, 19 November 2007\n/);
    expect(license).toContain('13. Remote Network Interaction; Use with the GNU General Public License.');
    expect(license.split('\n').length).toBeGreaterThan(600);
    expect((JSON.parse(read('package.json')) as { license: string }).license).toBe('AGPL-3.0-or-later');
  });

  it("lists every command in the README's command table", async () => {
    const commandsOf = (help: string): string[] =>
      [...help.split(/^Commands:$/m)[1]!.matchAll(/^ {2}([a-z-]+)/gm)].map((m) => m[1] as string).filter((c) => c !== 'help');
    const table = read('README.md')
      .split('\n')
      .filter((l) => l.startsWith('| `'));
    const cwd = tempDir();
    for (const command of commandsOf((await runBin(['--help'], { cwd })).stdout)) {
      const help = (await runBin([command, '--help'], { cwd })).stdout;
      const names = help.includes('Commands:') ? commandsOf(help).map((sub) => `${command} ${sub}`) : [command];
      for (const name of names)
        expect(
          table.some((row) => row.includes(`\`${name}`)),
          name,
        ).toBe(true);
    }
  });
});
