import { realpathSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { packageRoot } from '../../src/paths.js';

// The suite's own set-up (test/helpers/hermetic.ts), checked: with a ./mollysocket.toml in the repository root or
// MOLLY_*/RUST_LOG exported by the person running `npm test`, the other tests would see them.
describe('the test environment', () => {
  it('holds no MOLLY_* or RUST_LOG variable of the person running the tests', () => {
    expect(Object.keys(process.env).filter((n) => /^molly_/i.test(n) || n === 'RUST_LOG')).toEqual([]);
  });

  it('runs outside the repository, so that no ./mollysocket.toml there is read', () => {
    expect(realpathSync(process.cwd())).not.toBe(realpathSync(packageRoot));
    expect(loadConfig().file).toBeUndefined();
  });
});
