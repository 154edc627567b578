#!/usr/bin/env bash
# Copies the CRDs (deploy/crds/, the source of truth) into the Helm chart's crds/ directory.
# test/deploy/chart.test.ts fails when the two differ. Run after changing a CRD.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
src="$ROOT/deploy/crds"
dst="$ROOT/deploy/helm/keycutter/crds"
mkdir -p "$dst"
# remove CRDs that no longer exist upstream, then copy
for f in "$dst"/*.yaml; do
  [[ -e "$f" ]] || continue
  [[ -e "$src/$(basename "$f")" ]] || rm -v -- "$f"
done
cp -v -- "$src"/*.yaml "$dst"/
