#!/usr/bin/env bash
# The demo, on a fresh clone: installs what it needs, then runs `keycutter demo`. With --node, the
# same story on a real node (its parts and images are built first: docs/TESTING.md, "Cost").
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [[ ! -x node_modules/.bin/node || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
bash scripts/setup.sh demo
if [[ " $* " == *" --node "* ]]; then
  export KEYCUTTER_BUILD_JOBS="${KEYCUTTER_BUILD_JOBS:-$(nproc)}"
  bash scripts/build-node.sh
  bash scripts/build-images.sh
fi
export PATH="$ROOT/node_modules/.bin:$PATH"
exec node src/cli/main.ts demo "$@"
