#!/usr/bin/env bash
# Runs the README's test command with busy processes beside it (four by default, on this project's 2-core machines),
# as the suite must pass on a loaded machine: nothing in it may depend on timing. Usage: scripts/test-busy.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-4}
pids=()
stop() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq "$n"); do
  node -e 'for (;;) {}' &
  pids+=($!)
done
echo "test-busy: $n busy processes beside npm test" >&2
npm test
