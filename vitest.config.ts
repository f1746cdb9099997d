import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/postgres-setup.ts'],
    setupFiles: ['test/helpers/hermetic.ts'],
    // Worker processes, not threads: the hermetic setup changes the working directory, which a thread cannot.
    pool: 'forks',
    // Bounds that only end a test that would otherwise hang: generous, as a busy machine is slow.
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
