#!/usr/bin/env bash
# Copies the CRDs (deploy/crds/, the source of truth, what `kubectl apply -f` users apply) into the
# Helm chart's files/crds/, which templates/crds.yaml renders with the chart's labels and its keep
# policy so that `helm upgrade` upgrades them (Helm cannot read files outside the chart).
# test/deploy/chart.test.ts fails when the two differ. Run after changing a CRD.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
src="$ROOT/deploy/crds"
dst="$ROOT/deploy/helm/keycutter/files/crds"
mkdir -p "$dst"
# remove CRDs that no longer exist upstream, then copy
for f in "$dst"/*.yaml; do
  [[ -e "$f" ]] || continue
  [[ -e "$src/$(basename "$f")" ]] || rm -v -- "$f"
done
cp -v -- "$src"/*.yaml "$dst"/
