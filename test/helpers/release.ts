import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../src/paths.js';

const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string; repository: { url: string } };

/** The GitHub repository package.json names (owner/name, lower case as image names are). */
export const repositoryPath = (): string => {
  const m = /github\.com\/([^/]+\/[^/]+?)(?:\.git)?$/.exec(pkg.repository.url);
  if (!m) throw new Error(`package.json's repository.url is not a GitHub URL: ${pkg.repository.url}`);
  return (m[1] as string).toLowerCase();
};

/**
 * The released image the deployment files name: the release line a user follows, as the release workflow tags it
 * (MollySocket's scheme: `1` follows every 1.x.y; a 0.y.z version has no `0` tag, so 0.y is the line).
 */
export const releasedImage = (): string => {
  const [major, minor] = pkg.version.split('.');
  return `ghcr.io/${repositoryPath()}:${major === '0' ? `0.${minor}` : major}`;
};
