#!/usr/bin/env bash
# The whole test suite, on a fresh clone: installs what it needs (the real node's parts and images
# included), then type check, lint, unit, system tests and the real node's suite (test/node).
# Arguments go to the system tests' `node --test`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [[ ! -x node_modules/.bin/node || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "==> npm ci" >&2
  npm ci --no-audit --no-fund
fi
bash scripts/setup.sh
# node_modules/.bin first: the tests run on the Node 24 that package.json pins, not the machine's
export PATH="$ROOT/node_modules/.bin:$PATH"
node --version
npm run --silent test:all -- "$@"
