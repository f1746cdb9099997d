import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Run before every test file (vitest `setupFiles`): the suite ignores the configuration and environment of the
 * person running it. MOLLY_* and RUST_LOG would change what loadConfig and the logger read; a ./mollysocket.toml
 * in the repository root (where `npm start` looks for one) would be found through the working directory, and
 * ~/.config/mollysocket/config.toml through XDG_CONFIG_HOME. Tests name their files by absolute paths.
 */
for (const name of Object.keys(process.env)) {
  if (/^molly_/i.test(name) || name === 'RUST_LOG') delete process.env[name];
}
process.env.XDG_CONFIG_HOME = '/nonexistent';
process.chdir(mkdtempSync(join(tmpdir(), 'ms-cwd-')));
