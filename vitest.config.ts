import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/postgres-setup.ts'],
    setupFiles: ['test/helpers/hermetic.ts'],
    // Worker processes, not threads: the hermetic setup changes the working directory, which a thread cannot.
    pool: 'forks',
    testTimeout: 20_000,
    hookTimeout: 20_000,
  },
});
